"""The Azure state backend: records and payloads in an Azure Table, the outbox on a Storage queue.

Layout (one table, partitioned by correlation key so a record and its payloads share a partition
and can be written in one entity-group transaction):

* ``(key, "record")``: ``Doc`` (the record's JSON), ``Due`` (Edm.Double, absent when nothing is
  pending), ``Updated`` (Edm.Double). The entity's ETag is the record's version.
* ``(key, "payload-<fingerprint>")``: the payload zlib-compressed, split over binary properties
  ``D00``, ``D01``, ... (64 KiB each, at most 15) and ``Parts``.
* ``("~meta", name)``: ``Value``, a small JSON document.

The outbox is a queue whose messages (``{"key": ...}``, Base64 as the Functions queue trigger
expects) become visible when the key is due. Writing the record and sending the message are two
services, so a crash between them can leave a record due with no message: :meth:`AzureStore.sweep`
re-sends those.

Every SDK or transport failure becomes :class:`StateUnavailable` whose message names the
operation and the HTTP status, never the connection string or key. The Azure SDK is imported only
here, and this module only when ``STATE_STORE=azure``.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import logging
import math
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.data.tables import EdmType, EntityProperty, TableClient, TableTransactionError, UpdateMode
from azure.storage.queue import ExponentialRetry, QueueClient, TextBase64EncodePolicy

from .base import DueWork, StateConflict, StateUnavailable, Versioned
from .connection import AzureConnection
from .record import Record

__all__ = ["DEVELOPMENT_QUEUE_API_VERSION", "AzureStore", "message_key"]

log = logging.getLogger(__name__)

RECORD_ROW = "record"
PAYLOAD_PREFIX = "payload-"
META_PARTITION = "~meta"
# Table strings are UTF-16 and at most 64 KiB (FACTS-storage 3).
MAX_STRING_UNITS = 32 * 1024
CHUNK_BYTES = 64 * 1024
# 15 binary chunks plus keys and Parts stay under the 1 MiB entity limit.
MAX_CHUNKS = 15
# One entity-group transaction: at most 100 operations and 4 MiB of request; binary travels as
# Base64 (4/3). Keep a margin for the multipart framing and JSON around each entity.
_MAX_BATCH_OPERATIONS = 100
_MAX_BATCH_BYTES = 4 * 1024 * 1024 - 256 * 1024
_MAX_VISIBILITY_SECONDS = 7 * 24 * 3600 - 1
_MAX_MESSAGES_PER_RECEIVE = 32
# Azurite 3.35.0 accepts queue x-ms-version up to 2025-11-05; azure-storage-queue 12.18.1 sends
# 2026-10-06 and gets 400 InvalidHeaderValue. Tables sends 2019-02-02, which every Azurite accepts.
DEVELOPMENT_QUEUE_API_VERSION = "2025-11-05"
# Table keys may not hold these (the service answers 400, Azurite even 500).
_FORBIDDEN_KEY_CHARACTERS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_MAX_KEY_UNITS = 512  # 1 KiB of UTF-16
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
_QUEUE_NAME = re.compile(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]")
# Transport failures that azure-core does not always wrap (e.g. http.client.BadStatusLine from a
# malformed batch answer); requests' exceptions are OSErrors.
_FAILURES: tuple[type[BaseException], ...] = (AzureError, OSError, http.client.HTTPException)

# A webhook or queue invocation has seconds, not the SDK default of minutes, to spend on storage.
# The HTTP answer must come within 5 s (CONTRACT section 1): a storage call that hangs is cut
# short, and the alert falls back to the ITSM path rather than waiting for the SDK's defaults.
_CONNECTION_TIMEOUT_SECONDS = 3
_READ_TIMEOUT_SECONDS = 5


def message_key(body: str | bytes) -> str | None:
    """The key in an outbox message body as the queue trigger hands it over (decoded), else None."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    key = doc.get("key") if isinstance(doc, dict) else None
    if not isinstance(key, str) or not _key_is_usable(key) or key == META_PARTITION:
        return None
    return key


class AzureStore:
    """:class:`~bridge.state.base.StateStore` in an Azure Table and an Azure Storage queue."""

    name: ClassVar[str] = "azure"

    def __init__(
        self,
        connection: AzureConnection,
        table_name: str,
        queue_name: str,
        *,
        clock: Callable[[], float] = time.time,
        retries: int = 2,
    ) -> None:
        if not _TABLE_NAME.fullmatch(table_name):
            raise ValueError("table name must be 3-63 letters and digits, starting with a letter")
        if not _QUEUE_NAME.fullmatch(queue_name):
            raise ValueError("queue name must be 3-63 lower-case letters, digits and single hyphens")
        self._connection = connection
        self._table_name = table_name
        self._queue_name = queue_name
        # The queue and table keep time themselves; the clock is accepted for parity with SQLite.
        self._clock = clock
        self._ready_lock = threading.Lock()
        self._table_ready = False
        self._queue_ready = False
        self._credential: Any = None
        self._table, self._queue = self._clients(max(0, retries))

    @property
    def identity(self) -> str:
        """Which table holds the records (endpoint and name, never a credential): state kept
        beside the store on a machine, such as a fallback marker, is named after it."""
        return f"{self._connection.table_endpoint.rstrip('/')}/{self._table_name}"

    def _clients(self, retries: int) -> tuple[TableClient, QueueClient]:
        connection = self._connection
        timeouts: dict[str, Any] = {
            "connection_timeout": _CONNECTION_TIMEOUT_SECONDS,
            "read_timeout": _READ_TIMEOUT_SECONDS,
        }
        table_options: dict[str, Any] = {
            **timeouts,
            "retry_total": retries,
            "retry_backoff_factor": 0.5,
            "retry_backoff_max": 4,
        }
        queue_options: dict[str, Any] = {
            **timeouts,
            # The SDK's default waits 15 s before its first retry.
            "retry_policy": ExponentialRetry(
                initial_backoff=1, increment_base=2, retry_total=retries, random_jitter_range=1
            ),
            # The Functions queue trigger reads Base64 (FACTS-storage 1); a plain message would go
            # to the poison queue unseen. Receiving decodes by hand (see take_due).
            "message_encode_policy": TextBase64EncodePolicy(),
        }
        if connection.is_development():
            queue_options["api_version"] = DEVELOPMENT_QUEUE_API_VERSION
        try:
            if connection.connection_string is not None:
                table = TableClient.from_connection_string(
                    connection.connection_string, table_name=self._table_name, **table_options
                )
                queue = QueueClient.from_connection_string(
                    connection.connection_string, self._queue_name, **queue_options
                )
            else:
                self._credential = _token_credential(connection)
                table = TableClient(
                    endpoint=connection.table_endpoint,
                    table_name=self._table_name,
                    credential=self._credential,
                    **table_options,
                )
                queue = QueueClient(
                    account_url=connection.queue_endpoint,
                    queue_name=self._queue_name,
                    credential=self._credential,
                    **queue_options,
                )
        except ValueError:
            # The SDK's own message may quote the connection string; ours does not.
            raise StateUnavailable(
                f"Azure storage clients cannot be built from {connection.setting} (check its format)"
            ) from None
        return table, queue

    # ------------------------------------------------------------------ records

    def load(self, key: str) -> Versioned | None:
        _check_key(key)
        table = self._ready_table()
        with _failures("Table", "load"):
            try:
                entity = table.get_entity(key, RECORD_ROW, select=["Doc"])
            except ResourceNotFoundError:
                return None
        return Versioned(Record.from_json(entity["Doc"]), str(entity.metadata["etag"]))

    def insert(self, record: Record, payloads: Mapping[str, bytes] | None = None) -> str:
        entity = _record_entity(record)
        if payloads:
            return self._transact(
                "insert", record.key, [("create", entity), *_payload_operations(record.key, payloads)]
            )
        table = self._ready_table()
        with _failures("Table", "insert"):
            try:
                metadata = table.create_entity(entity)
            except ResourceExistsError:
                raise StateConflict(record.key) from None
        return str(metadata["etag"])

    def replace(self, record: Record, etag: str, payloads: Mapping[str, bytes] | None = None) -> str:
        entity = _record_entity(record)
        condition: dict[str, Any] = {
            "mode": UpdateMode.REPLACE,
            "etag": etag,
            "match_condition": MatchConditions.IfNotModified,
        }
        if payloads:
            return self._transact(
                "replace", record.key, [("update", entity, condition), *_payload_operations(record.key, payloads)]
            )
        table = self._ready_table()
        with _failures("Table", "replace"):
            try:
                metadata = table.update_entity(entity, **condition)
            except HttpResponseError as exc:
                # 412: changed since read; 404: deleted since read. Either way, read again.
                if exc.status_code in (404, 412):
                    raise StateConflict(record.key) from None
                raise
        return str(metadata["etag"])

    def payload(self, key: str, fingerprint: str) -> bytes | None:
        _check_key(key)
        row = _payload_row(fingerprint)
        table = self._ready_table()
        with _failures("Table", "payload read"):
            try:
                entity = table.get_entity(key, row)
            except ResourceNotFoundError:
                return None
        try:
            packed = b"".join(bytes(entity[f"D{i:02d}"]) for i in range(int(entity["Parts"])))
            return zlib.decompress(packed)
        except (KeyError, TypeError, ValueError, zlib.error):
            raise StateUnavailable(f"Azure Table payload read failed: the stored payload of {key} is damaged") from None

    def records(self) -> Iterator[Record]:
        table = self._ready_table()
        with _failures("Table", "record listing"):
            entities = table.query_entities(
                "PartitionKey ne @meta and RowKey eq @row",
                parameters={"meta": META_PARTITION, "row": RECORD_ROW},
                select=["Doc"],
            )
            for entity in entities:
                yield Record.from_json(entity["Doc"])

    def purge(self, before: float) -> int:
        if not math.isfinite(before):
            raise ValueError("purge needs a finite time")
        table = self._ready_table()
        purged = 0
        with _failures("Table", "purge"):
            old = list(
                table.query_entities(
                    "PartitionKey ne @meta and RowKey eq @row and Updated lt @cut",
                    parameters={"meta": META_PARTITION, "row": RECORD_ROW, "cut": float(before)},
                    select=["PartitionKey", "Doc"],
                )
            )
        for entity in old:
            record = Record.from_json(entity["Doc"])
            if record.due is not None or record.dead is not None or record.claim is not None:
                continue
            key = str(entity["PartitionKey"])
            with _failures("Table", "purge"):
                try:
                    # Only the version that was read: a delivery appended meanwhile keeps the record.
                    table.delete_entity(
                        key, RECORD_ROW, etag=entity.metadata["etag"], match_condition=MatchConditions.IfNotModified
                    )
                except ResourceModifiedError:
                    continue
            self.delete(key)  # its payloads
            purged += 1
        return purged

    def delete(self, key: str) -> None:
        _check_key(key)
        table = self._ready_table()
        with _failures("Table", "delete"):
            rows = [
                str(entity["RowKey"])
                for entity in table.query_entities("PartitionKey eq @key", parameters={"key": key}, select=["RowKey"])
            ]
            # The record goes first: a crash half-way leaves unreferenced payloads (harmless), never
            # a record whose payloads are gone.
            for row in sorted(rows, key=lambda r: r != RECORD_ROW):
                table.delete_entity(key, row)  # absent is fine: delete_entity ignores 404

    def _transact(self, operation: str, key: str, operations: list[Any]) -> str:
        if len(operations) > _MAX_BATCH_OPERATIONS:
            raise StateUnavailable(
                f"Azure Table {operation} failed: {len(operations) - 1} payloads exceed one transaction"
            )
        size = sum(_entity_request_bytes(op[1]) for op in operations)
        if size > _MAX_BATCH_BYTES:
            raise StateUnavailable(
                f"Azure Table {operation} failed: payloads too large to record together "
                f"(about {size // 1024} KiB, at most {_MAX_BATCH_BYTES // 1024} KiB per transaction)"
            )
        table = self._ready_table()
        with _failures("Table", operation):
            try:
                results = table.submit_transaction(operations)
            except TableTransactionError as exc:
                # Operation 0 is the record: exists (409), changed (412) or gone (404) since read.
                if exc.index == 0 and exc.status_code in (404, 409, 412):
                    raise StateConflict(key) from None
                raise
        return str(results[0]["etag"])

    # ------------------------------------------------------------------ outbox

    def schedule(self, key: str, delay_seconds: float) -> None:
        _check_key(key)
        queue = self._ready_queue()
        visibility = _whole_seconds(delay_seconds, low=0)
        with _failures("Queue", "schedule"):
            # time_to_live=-1: an outbox entry must not silently expire after the default 7 days.
            queue.send_message(
                json.dumps({"key": key}, separators=(",", ":")), visibility_timeout=visibility, time_to_live=-1
            )

    def take_due(self, limit: int, lease_seconds: float) -> list[DueWork]:
        if limit <= 0:
            return []
        count = min(limit, _MAX_MESSAGES_PER_RECEIVE)
        queue = self._ready_queue()
        with _failures("Queue", "receive"):
            messages = list(
                queue.receive_messages(
                    messages_per_page=count,
                    max_messages=count,
                    visibility_timeout=_whole_seconds(lease_seconds, low=1),
                )
            )
        work: list[DueWork] = []
        for message in messages:
            # Decoded here rather than by TextBase64DecodePolicy: one foreign, non-Base64 message
            # makes that policy fail the whole receive (AttributeError in 12.18.1, checked against
            # Azurite). This way a bad message is dropped and the rest are delivered.
            key = message_key(_from_base64(message.content))
            if key is None:
                log.warning("outbox: dropping malformed message %s from queue %s", message.id, self._queue_name)
                self._delete_message(message.id, message.pop_receipt or "")
                continue
            work.append(DueWork(key, (message.id, message.pop_receipt or "")))
        return work

    def finish(self, work: DueWork) -> None:
        receipt = work.receipt
        if not (isinstance(receipt, tuple) and len(receipt) == 2):
            return  # nothing held: handed over by the queue trigger, which deletes it itself
        self._delete_message(str(receipt[0]), str(receipt[1]))

    def _delete_message(self, message_id: str, pop_receipt: str) -> None:
        queue = self._ready_queue()
        with _failures("Queue", "delete message"):
            try:
                queue.delete_message(message_id, pop_receipt)
            except ResourceNotFoundError:
                pass  # already gone, or re-leased to someone else after our lease ran out
            except HttpResponseError as exc:
                if _error_code(exc) != "PopReceiptMismatch":
                    raise

    def sweep(self, now: float, grace_seconds: float) -> int:
        cut = float(now - grace_seconds)
        if not math.isfinite(cut):
            raise ValueError("sweep needs a finite time")
        table = self._ready_table()
        with _failures("Table", "sweep"):
            keys = [
                str(entity["PartitionKey"])
                for entity in table.query_entities(
                    "PartitionKey ne @meta and RowKey eq @row and Due lt @cut",
                    parameters={"meta": META_PARTITION, "row": RECORD_ROW, "cut": cut},
                    select=["PartitionKey"],
                )
            ]
        for key in keys:
            self.schedule(key, 0)
        if keys:
            log.info("outbox: re-scheduled %d overdue record(s)", len(keys))
        return len(keys)

    # ------------------------------------------------------------------ meta, health

    def get_meta(self, name: str) -> dict[str, Any] | None:
        _check_key(name, "meta name")
        table = self._ready_table()
        with _failures("Table", "meta read"):
            try:
                entity = table.get_entity(META_PARTITION, name)
            except ResourceNotFoundError:
                return None
        value: dict[str, Any] = json.loads(entity["Value"])
        return value

    def put_meta(self, name: str, value: Mapping[str, Any]) -> None:
        _check_key(name, "meta name")
        text = json.dumps(dict(value), separators=(",", ":"), sort_keys=True)
        _check_string_size("meta value", text)
        table = self._ready_table()
        with _failures("Table", "meta write"):
            table.upsert_entity(
                {"PartitionKey": META_PARTITION, "RowKey": name, "Value": text}, mode=UpdateMode.REPLACE
            )

    def ping(self) -> None:
        table = self._ready_table()
        queue = self._ready_queue()
        with _failures("Table", "ping"):
            try:
                table.get_entity(META_PARTITION, "ping")
            except ResourceNotFoundError:
                pass  # the table answered
        with _failures("Queue", "ping"):
            queue.get_queue_properties()

    def maintain(self) -> None:
        """Nothing to do: the storage service keeps itself."""

    def close(self) -> None:
        self._table.close()
        self._queue.close()
        close = getattr(self._credential, "close", None)
        if callable(close):
            close()

    # ------------------------------------------------------------------ plumbing

    def _ready_table(self) -> TableClient:
        if not self._table_ready:
            with self._ready_lock:
                if not self._table_ready:
                    with _failures("Table", "create-if-missing"):
                        _create_if_missing(self._table.create_table, "table", self._table_name)
                    self._table_ready = True
        return self._table

    def _ready_queue(self) -> QueueClient:
        if not self._queue_ready:
            with self._ready_lock:
                if not self._queue_ready:
                    with _failures("Queue", "create-if-missing"):
                        _create_if_missing(self._queue.create_queue, "queue", self._queue_name)
                    self._queue_ready = True
        return self._queue


# ---------------------------------------------------------------------- helpers


def _token_credential(connection: AzureConnection) -> Any:
    # Imported here: azure-identity is needed only for identity connections.
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if connection.managed_identity:
        if connection.client_id:
            return ManagedIdentityCredential(client_id=connection.client_id)
        return ManagedIdentityCredential()
    if connection.client_id:
        return DefaultAzureCredential(managed_identity_client_id=connection.client_id)
    return DefaultAzureCredential()


def _create_if_missing(create: Callable[[], object], kind: str, name: str) -> None:
    try:
        create()
    except ResourceExistsError:
        pass
    except HttpResponseError as exc:
        # In Azure the infrastructure creates the table and queue, and the app's identity may hold
        # data roles only; its create is refused though the resource exists.
        if exc.status_code != 403:
            raise
        log.debug("state store: may not create %s %s (403); assuming it exists", kind, name)


@contextmanager
def _failures(service: str, operation: str) -> Iterator[None]:
    """Turn SDK and transport failures into StateUnavailable, naming operation and status only.

    SDK messages can quote request details, so none of their text is carried over, and the
    original is not chained (``from None``) so no traceback shows it either.
    """
    try:
        yield
    except _FAILURES as exc:
        detail = type(exc).__name__
        status = getattr(exc, "status_code", None)
        if status:
            detail += f", HTTP {status}"
            code = _error_code(exc)
            if code:
                detail += f" {code}"
        elif isinstance(exc, ClientAuthenticationError):
            detail += ": no token from the credential"
        elif isinstance(exc, ServiceRequestError):
            detail += ": cannot connect"
        raise StateUnavailable(f"Azure {service} {operation} failed ({detail})") from None


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    if code is None:
        return None
    text = str(getattr(code, "value", code))
    return text if re.fullmatch(r"[A-Za-z0-9]{1,64}", text) else None


def _key_is_usable(key: str) -> bool:
    return 0 < len(key.encode("utf-16-le")) // 2 <= _MAX_KEY_UNITS and not _FORBIDDEN_KEY_CHARACTERS.search(key)


def _check_key(key: str, what: str = "key") -> None:
    if not isinstance(key, str) or not _key_is_usable(key):
        raise ValueError(
            f"{what} cannot be an Azure Table key: 1-512 characters without / \\ # ? or control characters"
        )
    if key == META_PARTITION and what == "key":
        raise ValueError(f"{what} {META_PARTITION} is reserved")


def _check_string_size(what: str, text: str) -> None:
    units = len(text.encode("utf-16-le")) // 2
    if units > MAX_STRING_UNITS:
        raise StateUnavailable(
            f"{what} too large for an Azure Table string: {units} characters, at most {MAX_STRING_UNITS}"
        )


def _record_entity(record: Record) -> dict[str, Any]:
    _check_key(record.key)
    doc = record.to_json()
    _check_string_size(f"record {record.key}", doc)
    entity: dict[str, Any] = {
        "PartitionKey": record.key,
        "RowKey": RECORD_ROW,
        "Doc": doc,
        # Explicit Edm.Double: an integral float must not become Int32, or `Due lt @cut` misses it.
        "Updated": EntityProperty(float(record.updated_at), EdmType.DOUBLE),
    }
    if record.due is not None:
        entity["Due"] = EntityProperty(float(record.due), EdmType.DOUBLE)
    return entity


def _payload_row(fingerprint: str) -> str:
    row = PAYLOAD_PREFIX + fingerprint
    _check_key(row, "fingerprint")
    return row


def _payload_operations(key: str, payloads: Mapping[str, bytes]) -> list[Any]:
    operations: list[Any] = []
    for fingerprint, body in payloads.items():
        packed = zlib.compress(body)
        chunks = [packed[i : i + CHUNK_BYTES] for i in range(0, len(packed), CHUNK_BYTES)]
        if len(chunks) > MAX_CHUNKS:
            raise StateUnavailable(
                f"payload too large to record: {len(body)} bytes compress to {len(packed)}, "
                f"at most {MAX_CHUNKS * CHUNK_BYTES} fit one Azure Table entity"
            )
        entity: dict[str, Any] = {"PartitionKey": key, "RowKey": _payload_row(fingerprint), "Parts": len(chunks)}
        for i, chunk in enumerate(chunks):
            entity[f"D{i:02d}"] = chunk
        # Content-addressed: writing the same fingerprint again writes the same bytes.
        operations.append(("upsert", entity, {"mode": UpdateMode.REPLACE}))
    return operations


def _entity_request_bytes(entity: Mapping[str, Any]) -> int:
    size = 1024  # keys, property names, OData annotations, multipart headers
    for value in entity.values():
        if isinstance(value, bytes):
            size += (len(value) + 2) // 3 * 4
        elif isinstance(value, str):
            size += len(value.encode("utf-8"))
        else:
            size += 32
    return size


def _whole_seconds(seconds: float, *, low: int) -> int:
    """Queue visibility is whole seconds between ``low`` and just under 7 days."""
    if math.isnan(seconds) or seconds <= low:
        return low
    if seconds >= _MAX_VISIBILITY_SECONDS:
        return _MAX_VISIBILITY_SECONDS
    return math.ceil(seconds)


def _from_base64(content: object) -> bytes:
    if isinstance(content, bytes):
        content = content.decode("ascii", "replace")
    if not isinstance(content, str):
        return b""
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        return b""
