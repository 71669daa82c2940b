"""The ``azure`` state backend end to end, on Azurite: ``serve`` draining the queue, and the
Function's queue trigger taking a real (Base64) outbox message."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient

from bridge import runtime
from bridge.sandbox.stack import SandboxStack
from bridge.sandbox.stack import metric_alert as metric
from tests.azurite import Azurite

from .cluster import Cluster, running
from .test_durability import creates

pytestmark = pytest.mark.integration


@pytest.fixture
def stack() -> Iterator[SandboxStack]:
    with SandboxStack() as sandbox:
        yield sandbox


def azure_settings(azurite: Azurite) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    return {
        "STATE_STORE": "azure",
        "AzureWebJobsStorage": azurite.connection_string,
        "STATE_TABLE_NAME": f"state{suffix}",
        "OUTBOX_QUEUE_NAME": f"outbox-{suffix}",
    }


def test_serve_on_azure_storage_queues_then_drains_from_the_queue(
    stack: SandboxStack, azurite: Azurite, tmp_path: Path
) -> None:
    settings = azure_settings(azurite)
    cluster: Cluster
    for cluster in running(stack, tmp_path / "unused.sqlite3", **settings):
        guids = [str(uuid.uuid4()) for _ in range(4)]
        cluster.snow.stop()
        answers = [cluster.post(i, metric(g)) for i, g in enumerate(guids)]
        assert [a.status for a in answers] == [202] * 4, [a.body for a in answers]
        assert cluster.pending() == 4
        cluster.snow.start()
        cluster.wait_drained(30)
        incidents = cluster.incidents_by_key()
        assert all(len(incidents[g]) == 1 for g in guids)
        assert creates(cluster) == 4


def test_the_functions_queue_trigger_finishes_a_queued_alert(
    stack: SandboxStack, azurite: Azurite, user_functions: dict[str, Any]
) -> None:
    env = stack.bridge_env(**azure_settings(azurite), ITSM_INLINE_SECONDS="1")
    built = runtime.build_runtime(env)
    runtime.install(built.api, built)
    try:
        guid = str(uuid.uuid4())
        stack.servicenow.stop()
        request = func.HttpRequest(
            method="POST",
            url="/api/alerts",
            headers={"Authorization": f"Bearer {stack.token()}"},
            body=json.dumps(metric(guid)).encode(),
        )
        answer = user_functions["alerts"](request)
        assert answer.status_code == 202, answer.get_body()
        stack.servicenow.start()

        # What the Functions host does: receive the message, Base64-decode it, hand it over.
        queue = QueueClient.from_connection_string(
            azurite.connection_string, env["OUTBOX_QUEUE_NAME"], api_version="2025-11-05"
        )
        messages = []
        for _ in range(100):
            messages = list(queue.receive_messages(max_messages=32, visibility_timeout=30))
            if messages:
                break
            time.sleep(0.1)
        assert len(messages) == 1
        body = base64.b64decode(messages[0].content).decode()
        assert json.loads(body) == {"key": guid}
        user_functions["outbox"](func.QueueMessage(id=messages[0].id, body=body.encode()))
        [incident] = [i for i in stack.servicenow.records("incident") if i["correlation_id"] == guid]
        assert incident["state"] == "1"
        record = built.reconciler.store.load(guid)
        assert record is not None and record.record.due is None
    finally:
        runtime.reset()
        built.close()
