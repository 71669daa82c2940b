"""Both state backends against the shared contract, then what only the Azure backend has.

SQLite runs on a temporary file with a fake clock; Azure runs against one Azurite for the session
(``azurite`` fixture), with a fresh table and queue per test. The Azure-only cases cover the wire
format the Functions queue trigger depends on, the size limits of Table entities, failures
becoming :class:`StateUnavailable` without secrets, and ``AzureWebJobsStorage`` parsing.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.state.azure import DEVELOPMENT_QUEUE_API_VERSION, AzureStore, message_key
from bridge.state.base import StateConflict, StateStore, StateUnavailable
from bridge.state.connection import DEVELOPMENT_KEY, AzureConnection
from bridge.state.sqlite import WAL_AUTOCHECKPOINT_PAGES, SqliteStore
from tests.kit import FakeClock

from ..azurite import Azurite, free_port
from .contract import KEY, OTHER_KEY, T0, PassTime, StoreContract, make_record, take_within

FAKE_KEY = base64.b64encode(b"not a real account key, but shaped like one" * 2).decode()


# ---------------------------------------------------------------------- SQLite


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock(T0)

    @pytest.fixture
    def store(self, tmp_path: Path, clock: FakeClock) -> Iterator[StateStore]:
        store = SqliteStore(tmp_path / "state.sqlite3", clock=clock)
        yield store
        store.close()

    @pytest.fixture
    def peer(self, store: StateStore, tmp_path: Path, clock: FakeClock) -> Iterator[StateStore]:
        peer = SqliteStore(tmp_path / "state.sqlite3", clock=clock)
        yield peer
        peer.close()

    @pytest.fixture
    def pass_time(self, clock: FakeClock) -> PassTime:
        return clock.advance

    # A write of the record alone is one statement (its own transaction); with payloads, one
    # transaction holds both. Fewer statements per delivery, the same atomicity.

    @staticmethod
    def _statements(store: SqliteStore) -> list[str]:
        seen: list[str] = []
        store._db.set_trace_callback(lambda sql: seen.append(sql.split(None, 1)[0].upper()))
        return seen

    def test_record_writes_alone_are_single_statements(self, store: SqliteStore) -> None:
        seen = self._statements(store)
        etag = store.insert(make_record(due=None))
        etag = store.replace(make_record(attempts=4), etag)
        store.schedule(KEY, 5.0)
        with pytest.raises(StateConflict):
            store.replace(make_record(attempts=5), "1")

        assert seen == ["INSERT", "UPDATE", "UPDATE", "UPDATE"]
        loaded = store.load(KEY)
        assert loaded is not None and loaded.etag == etag == "2" and loaded.record.attempts == 4

    def test_record_and_payloads_are_written_in_one_transaction(self, store: SqliteStore) -> None:
        seen = self._statements(store)
        etag = store.insert(make_record(), {"f" * 64: b"{}"})
        store.replace(make_record(attempts=4), etag, {"e" * 64: b"[]"})

        assert seen == ["BEGIN", "INSERT", "INSERT", "COMMIT", "BEGIN", "UPDATE", "INSERT", "COMMIT"]

    def test_a_lone_write_waits_for_another_writer_instead_of_failing(self, store: SqliteStore, tmp_path: Path) -> None:
        etag = store.insert(make_record())
        other = sqlite3.connect(tmp_path / "state.sqlite3", isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock for a while
        release = threading.Timer(0.3, other.execute, ("COMMIT",))
        release.start()
        started = time.monotonic()
        try:
            assert store.replace(make_record(attempts=9), etag) == "2"
        finally:
            release.join()
            other.close()

        assert time.monotonic() - started >= 0.25
        loaded = store.load(KEY)
        assert loaded is not None and loaded.record.attempts == 9

    def test_commits_do_not_checkpoint_the_wal_maintain_does(self, store: SqliteStore, tmp_path: Path) -> None:
        # Checkpointing inside a commit cost the request that made it ~2 ms (the in-process p99);
        # the worker's maintain() does it instead, with SQLite's own far above as a bound.
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_AUTOCHECKPOINT_PAGES >= 4096
        etag = store.insert(make_record(attempts=0), {"a" * 64: b"x" * 4000})
        for attempts in range(1, 1200):  # more than SQLite's default 1,000 pages of WAL
            etag = store.replace(make_record(attempts=attempts), etag, {f"{attempts:064x}": b"y" * 4000})
        wal = tmp_path / "state.sqlite3-wal"
        # Every commit went on appending: the WAL is past the 1,000 pages a commit would have
        # checkpointed at (a checkpoint lets the next writer start the WAL over).
        assert wal.stat().st_size > 1000 * 4096

        store.maintain()
        etag = store.replace(make_record(attempts=1200), etag)
        probe = sqlite3.connect(tmp_path / "state.sqlite3", isolation_level=None)
        try:
            busy, frames, copied = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            probe.close()
        # After maintain() copied it all back, the next commit started the WAL over.
        assert (busy, frames) == (0, copied) and frames < 10
        loaded = store.load(KEY)
        assert loaded is not None and loaded.record.attempts == 1200

    def test_a_failing_lone_write_is_state_unavailable(self, store: SqliteStore, tmp_path: Path) -> None:
        etag = store.insert(make_record())
        store._db.execute("DROP TABLE records")  # any SQLite error will do

        with pytest.raises(StateUnavailable, match=r"^SQLite state store failed: OperationalError"):
            store.replace(make_record(attempts=9), etag)


# ---------------------------------------------------------------------- Azure


def fresh_names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:12]
    return f"t{suffix}", f"q{suffix}"


class TestAzureStore(StoreContract):
    @pytest.fixture
    def names(self) -> tuple[str, str]:
        return fresh_names()

    @pytest.fixture
    def connection(self, azurite: Azurite) -> AzureConnection:
        return AzureConnection.from_connection_string(azurite.connection_string)

    @pytest.fixture
    def store(self, connection: AzureConnection, names: tuple[str, str]) -> Iterator[AzureStore]:
        store = AzureStore(connection, *names)
        yield store
        store.close()

    @pytest.fixture
    def peer(self, store: StateStore, connection: AzureConnection, names: tuple[str, str]) -> Iterator[AzureStore]:
        peer = AzureStore(connection, *names)
        yield peer
        peer.close()

    @pytest.fixture
    def pass_time(self) -> PassTime:
        return time.sleep

    # ------------------------------------------------------------------ wire format

    def test_outbox_messages_are_base64_json_as_the_queue_trigger_reads_them(
        self, store: AzureStore, azurite: Azurite, names: tuple[str, str]
    ) -> None:
        from azure.storage.queue import QueueClient

        store.schedule(KEY, 0)

        raw = QueueClient.from_connection_string(
            azurite.connection_string, names[1], api_version=DEVELOPMENT_QUEUE_API_VERSION
        )
        try:
            [message] = raw.peek_messages(max_messages=5)
        finally:
            raw.close()
        # What the Functions runtime hands the function after its Base64 decoding:
        body = base64.b64decode(message.content, validate=True)
        assert json.loads(body) == {"key": KEY}
        assert message_key(body) == KEY
        assert message_key(body.decode()) == KEY

    def test_malformed_messages_are_dropped_and_good_ones_delivered(
        self, store: AzureStore, azurite: Azurite, names: tuple[str, str], caplog: pytest.LogCaptureFixture
    ) -> None:
        from azure.storage.queue import QueueClient

        store.schedule(KEY, 0)
        raw = QueueClient.from_connection_string(
            azurite.connection_string, names[1], api_version=DEVELOPMENT_QUEUE_API_VERSION
        )
        try:
            raw.send_message("not base64 at all!")
            raw.send_message(base64.b64encode(b'{"nokey": 1}').decode())
        finally:
            raw.close()

        with caplog.at_level(logging.WARNING, logger="bridge.state.azure"):
            work = take_within(store, timeout=5, limit=10, lease=1)
            deadline = time.monotonic() + 5
            while len(caplog.records) < 2 and time.monotonic() < deadline:
                work += store.take_due(10, 1)

        assert [w.key for w in work] == [KEY]
        assert len([r for r in caplog.records if "malformed" in r.getMessage()]) == 2
        store.finish(work[0])
        time.sleep(1.2)  # past the lease: deleted messages, malformed ones included, stay gone
        assert store.take_due(10, 30) == []

    def test_finish_twice_or_after_the_message_is_gone_is_harmless(self, store: AzureStore) -> None:
        store.schedule(KEY, 0)
        [work] = take_within(store, timeout=5)

        store.finish(work)
        store.finish(work)

    def test_schedule_clamps_delays_the_queue_would_refuse(self, store: AzureStore) -> None:
        store.schedule(KEY, 30 * 24 * 3600)  # longer than the queue's 7 days
        store.schedule(OTHER_KEY, -5)

        work = take_within(store, timeout=5)
        assert [w.key for w in work] == [OTHER_KEY]

    def test_sweep_reschedules_records_overdue_beyond_the_grace(self, store: AzureStore) -> None:
        now = time.time()
        store.insert(make_record(KEY, due=now - 100), {"a" * 64: b"{}"})
        store.insert(make_record(OTHER_KEY, due=now - 1))  # within the grace: its message may be on the way
        store.insert(make_record("3b241101-e2bb-4255-8caf-4136c566a962", due=None))
        store.insert(make_record("9f2a4c1e-0000-4000-8000-000000000000", due=now + 100))
        store.put_meta("record", {"Due": 0})

        assert store.sweep(now, 10) == 1

        work = take_within(store, timeout=5)
        assert [w.key for w in work] == [KEY]

    def test_sweep_finds_integral_due_times(self, store: AzureStore) -> None:
        # A whole-number float must still be stored as a double, or the Due filter misses it.
        store.insert(make_record(KEY, due=1_000.0))

        assert store.sweep(2_000.0, 10) == 1

    # ------------------------------------------------------------------ limits

    def test_a_payload_beyond_the_chunk_limit_is_refused_and_nothing_is_written(self, store: AzureStore) -> None:
        body = os.urandom(15 * 64 * 1024 + 1)  # incompressible: needs a 16th chunk

        with pytest.raises(StateUnavailable, match="payload too large to record"):
            store.insert(make_record(), {"a" * 64: body})

        assert store.load(KEY) is None
        assert store.payload(KEY, "a" * 64) is None

    def test_payloads_too_large_for_one_transaction_are_refused(self, store: AzureStore) -> None:
        payloads = {c * 64: os.urandom(900_000) for c in "abcd"}

        with pytest.raises(StateUnavailable, match="too large"):
            store.insert(make_record(), payloads)
        assert store.load(KEY) is None

    def test_a_record_too_long_for_a_table_string_is_refused(self, store: AzureStore) -> None:
        record = make_record(written={f"{i:064x}": "created" for i in range(600)})

        with pytest.raises(StateUnavailable, match="too large"):
            store.insert(record)
        assert store.load(KEY) is None

    @pytest.mark.parametrize("key", ["", "a/b", "a\\b", "a#b", "a?b", "a\x00b", "a\x1fb", "a\x7fb", "a\x9fb", "~meta"])
    def test_keys_the_table_cannot_hold_are_refused(self, store: AzureStore, key: str) -> None:
        with pytest.raises(ValueError):
            store.load(key)
        with pytest.raises(ValueError):
            store.insert(make_record(key))
        with pytest.raises(ValueError):
            store.schedule(key, 0)

    def test_a_fingerprint_the_table_cannot_hold_is_refused(self, store: AzureStore) -> None:
        with pytest.raises(ValueError):
            store.insert(make_record(), {"a/b": b"{}"})
        assert store.load(KEY) is None

    # ------------------------------------------------------------------ failures

    def test_an_unreachable_account_raises_state_unavailable_without_secrets(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        port = free_port()
        text = (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={FAKE_KEY};"
            f"QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
            f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
        store = AzureStore(AzureConnection.from_connection_string(text), *fresh_names(), retries=0)
        calls = [
            lambda: store.load(KEY),
            lambda: store.insert(make_record(), {"a" * 64: b"{}"}),
            lambda: store.schedule(KEY, 0),
            lambda: store.take_due(1, 1),
            lambda: list(store.records()),
            store.ping,
        ]
        try:
            with caplog.at_level(logging.DEBUG):
                for call in calls:
                    with pytest.raises(StateUnavailable) as caught:
                        call()
                    message = str(caught.value)
                    assert message.startswith("Azure ")
                    assert FAKE_KEY not in message
                    assert "AccountKey" not in message
                    assert caught.value.__suppress_context__
        finally:
            store.close()
        assert FAKE_KEY not in caplog.text
        assert FAKE_KEY[:20] not in caplog.text

    def test_an_identity_connection_that_gets_no_token_raises_state_unavailable(self) -> None:
        port = free_port()
        connection = AzureConnection.from_env(
            {
                "AzureWebJobsStorage__tableServiceUri": f"https://127.0.0.1:{port}/devstoreaccount1",
                "AzureWebJobsStorage__queueServiceUri": f"https://127.0.0.1:{port}/devstoreaccount1",
                "AzureWebJobsStorage__credential": "managedidentity",
            }
        )
        assert connection is not None
        store = AzureStore(connection, *fresh_names(), retries=0)
        try:
            with pytest.raises(StateUnavailable, match=r"^Azure Table "):
                store.load(KEY)
            with pytest.raises(StateUnavailable, match=r"^Azure Queue "):
                store.schedule(KEY, 0)
        finally:
            store.close()

    def test_a_wrong_account_key_raises_state_unavailable_not_conflict(self, azurite: Azurite) -> None:
        text = azurite.connection_string.replace(DEVELOPMENT_KEY, FAKE_KEY)
        store = AzureStore(AzureConnection.from_connection_string(text), *fresh_names(), retries=0)
        try:
            with pytest.raises(StateUnavailable, match="HTTP 403") as caught:
                store.load(KEY)
        finally:
            store.close()
        assert FAKE_KEY not in str(caught.value)

    def test_pinned_queue_version_works_with_a_default_azurite(self) -> None:
        # A developer's plain `azurite` checks x-ms-version; the store pins one it accepts.
        with Azurite(skip_api_version_check=False) as strict:
            connection = AzureConnection.from_connection_string(strict.connection_string)
            assert connection.is_development()
            store = AzureStore(connection, *fresh_names())
            try:
                store.insert(make_record(due=None))
                store.schedule(KEY, 0)
                [work] = take_within(store, timeout=5)
                store.finish(work)
                store.ping()
            finally:
                store.close()


# ---------------------------------------------------------------------- queue-trigger bodies


@pytest.mark.parametrize("body", [f'{{"key":"{KEY}"}}', f'{{"key": "{KEY}", "extra": 1}}'.encode()])
def test_message_key_reads_good_bodies(body: str | bytes) -> None:
    assert message_key(body) == KEY


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        "[]",
        "null",
        '"key"',
        '{"key": 5}',
        '{"key": ""}',
        '{"key": null}',
        '{"nokey": "a"}',
        '{"key": "a/b"}',
        '{"key": "~meta"}',
        b"\xff\xfe",
        base64.b64encode(f'{{"key":"{KEY}"}}'.encode()).decode(),
    ],
)
def test_message_key_returns_none_for_junk(body: str | bytes) -> None:
    assert message_key(body) is None


# ---------------------------------------------------------------------- AzureWebJobsStorage


class TestAzureConnection:
    def test_nothing_configured_is_none(self) -> None:
        assert AzureConnection.from_env({}) is None
        assert AzureConnection.from_env({"AzureWebJobsStorage": "  ", "OTHER": "x"}) is None

    def test_a_connection_string(self) -> None:
        text = (
            f"DefaultEndpointsProtocol=https;AccountName=stbridge01;AccountKey={FAKE_KEY};"
            "EndpointSuffix=core.windows.net"
        )

        connection = AzureConnection.from_env({"AzureWebJobsStorage": text})

        assert connection is not None
        assert connection.connection_string == text
        assert connection.table_endpoint == "https://stbridge01.table.core.windows.net"
        assert connection.queue_endpoint == "https://stbridge01.queue.core.windows.net"
        assert not connection.uses_identity
        assert not connection.is_development()
        assert FAKE_KEY not in connection.describe()
        assert FAKE_KEY not in repr(connection)
        assert "stbridge01" in connection.describe()

    def test_a_connection_string_wins_over_identity_settings(self) -> None:
        text = f"AccountName=stbridge01;AccountKey={FAKE_KEY}"
        connection = AzureConnection.from_env(
            {"AzureWebJobsStorage": text, "AzureWebJobsStorage__accountName": "other01"}
        )
        assert connection is not None
        assert connection.account_name == "stbridge01"

    def test_use_development_storage(self) -> None:
        connection = AzureConnection.from_env({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})

        assert connection is not None
        assert connection.is_development()
        assert connection.connection_string is not None
        assert "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1" in connection.connection_string
        assert "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1" in connection.connection_string
        assert DEVELOPMENT_KEY in connection.connection_string
        assert DEVELOPMENT_KEY not in connection.describe()
        assert "devstoreaccount1" in connection.describe()

    def test_an_explicit_azurite_connection_string_is_development(self, azurite: Azurite) -> None:
        connection = AzureConnection.from_connection_string(azurite.connection_string)
        assert connection.is_development()
        assert connection.table_endpoint == f"http://127.0.0.1:{azurite.table_port}/devstoreaccount1"

    def test_a_sas_connection_string(self) -> None:
        text = "TableEndpoint=https://x.table.core.windows.net/;QueueEndpoint=https://x.queue.core.windows.net/;SharedAccessSignature=sv=2022&sig=c2VjcmV0"
        connection = AzureConnection.from_env({"AzureWebJobsStorage": text})
        assert connection is not None
        assert connection.table_endpoint == "https://x.table.core.windows.net"
        assert "sig=" not in connection.describe()

    def test_account_name_with_a_user_assigned_managed_identity(self) -> None:
        client_id = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
        connection = AzureConnection.from_env(
            {
                "AzureWebJobsStorage__accountName": "stbridge01",
                "AzureWebJobsStorage__credential": "managedidentity",
                "AzureWebJobsStorage__clientId": client_id,
            }
        )

        assert connection is not None
        assert connection.uses_identity
        assert connection.managed_identity
        assert connection.client_id == client_id
        assert connection.table_endpoint == "https://stbridge01.table.core.windows.net"
        assert connection.queue_endpoint == "https://stbridge01.queue.core.windows.net"
        assert not connection.is_development()
        assert "managed identity" in connection.describe()

    def test_explicit_service_uris_with_the_default_credential(self) -> None:
        connection = AzureConnection.from_env(
            {
                "AzureWebJobsStorage__tableServiceUri": "https://stbridge01.table.core.windows.net/",
                "AzureWebJobsStorage__queueServiceUri": "https://stbridge01.queue.core.windows.net/",
            }
        )

        assert connection is not None
        assert not connection.managed_identity
        assert connection.client_id is None
        assert connection.table_endpoint == "https://stbridge01.table.core.windows.net"
        assert connection.queue_endpoint == "https://stbridge01.queue.core.windows.net"
        assert connection.account_name == "stbridge01"
        assert "DefaultAzureCredential" in connection.describe()

    def test_the_deployed_settings_shape(self) -> None:
        # What infra/app/api.bicep sets: account name and every service URI, with trailing slashes.
        connection = AzureConnection.from_env(
            {
                "AzureWebJobsStorage__accountName": "stbridge01",
                "AzureWebJobsStorage__blobServiceUri": "https://stbridge01.blob.core.windows.net/",
                "AzureWebJobsStorage__queueServiceUri": "https://stbridge01.queue.core.windows.net/",
                "AzureWebJobsStorage__tableServiceUri": "https://stbridge01.table.core.windows.net/",
                "AzureWebJobsStorage__credential": "managedidentity",
                "AzureWebJobsStorage__clientId": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
            }
        )
        assert connection is not None
        assert connection.queue_endpoint == "https://stbridge01.queue.core.windows.net"

    def test_another_prefix(self) -> None:
        connection = AzureConnection.from_env({"STATE__accountName": "stbridge01"}, prefix="STATE")
        assert connection is not None
        assert connection.setting == "STATE"

    @pytest.mark.parametrize(
        ("env", "setting"),
        [
            (
                {"AzureWebJobsStorage__tableServiceUri": "https://secretish.table.core.windows.net"},
                "AzureWebJobsStorage__queueServiceUri",
            ),
            (
                {"AzureWebJobsStorage__queueServiceUri": "https://secretish.queue.core.windows.net"},
                "AzureWebJobsStorage__tableServiceUri",
            ),
            ({"AzureWebJobsStorage__credential": "managedidentity"}, "AzureWebJobsStorage__accountName"),
            (
                {"AzureWebJobsStorage__clientId": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"},
                "AzureWebJobsStorage__accountName",
            ),
            ({"AzureWebJobsStorage__accountName": "Secretish_Name"}, "AzureWebJobsStorage__accountName"),
            (
                {"AzureWebJobsStorage__accountName": "stbridge01", "AzureWebJobsStorage__credential": "secretish"},
                "AzureWebJobsStorage__credential",
            ),
            (
                {"AzureWebJobsStorage__accountName": "stbridge01", "AzureWebJobsStorage__clientId": "secretish"},
                "AzureWebJobsStorage__clientId",
            ),
            (
                {
                    "AzureWebJobsStorage__tableServiceUri": "http://secretish.table.core.windows.net",
                    "AzureWebJobsStorage__queueServiceUri": "https://secretish.queue.core.windows.net",
                },
                "AzureWebJobsStorage__tableServiceUri",
            ),
            (
                {
                    "AzureWebJobsStorage__accountName": "stbridge01",
                    "AzureWebJobsStorage__queueServiceUri": "https://secretish.queue.core.windows.net?sig=secretish",
                },
                "AzureWebJobsStorage__queueServiceUri",
            ),
            ({"AzureWebJobsStorage": "secretish"}, "AzureWebJobsStorage"),
            ({"AzureWebJobsStorage": "AccountName=secretish"}, "AzureWebJobsStorage"),
            (
                {"AzureWebJobsStorage": "AccountKey=secretish;TableEndpoint=http://x/;QueueEndpoint=http://x/"},
                "AzureWebJobsStorage",
            ),
            (
                {"AzureWebJobsStorage": "AccountName=secretish;AccountKey=secretish;DefaultEndpointsProtocol=ftp"},
                "AzureWebJobsStorage",
            ),
            (
                {"AzureWebJobsStorage": "SharedAccessSignature=sig%3Dsecretish;TableEndpoint=https://x.table/"},
                "AzureWebJobsStorage",
            ),
            ({"AzureWebJobsStorage": "UseDevelopmentStorage=secretish"}, "AzureWebJobsStorage"),
        ],
    )
    def test_half_or_malformed_settings_name_the_setting_and_echo_no_value(
        self, env: dict[str, str], setting: str
    ) -> None:
        with pytest.raises(ConfigError) as caught:
            AzureConnection.from_env(env)

        assert caught.value.setting == setting
        assert str(caught.value).startswith(f"{setting}: ")
        assert "secretish" not in str(caught.value).lower()


def test_state_conflict_and_unavailable_stay_distinct() -> None:
    # The reconciler retries a conflict at once and backs off on unavailability.
    assert not issubclass(StateConflict, StateUnavailable)
    assert not issubclass(StateUnavailable, StateConflict)
