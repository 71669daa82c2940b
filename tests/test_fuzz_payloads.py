"""Property tests: no payload, however odd, makes the bridge fail with anything but a 4xx.

Real samples are mutated at random paths with random JSON values (strings, numbers, nulls,
lists, objects, unicode). Parsing may refuse them, but only with ``PayloadError``; whatever it
accepts, the key, fingerprint, mapping and notes must handle without raising, and the reconciler
must record it durably and apply it (create, or ignore with a reason) on its first pass.
The runs are derandomized so CI is repeatable; explore further with ``--hypothesis-seed=N``
and without ``derandomize``.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import threads
from bridge.alerts import parse_alert
from bridge.cmdb import CmdbBinder
from bridge.correlation import canonical_payload, correlation_key, fingerprint
from bridge.errors import PayloadError
from bridge.mapping import build_work_item, resolution, update_note
from bridge.reconcile import Action, Reconciler
from bridge.retry import RetryPolicy
from bridge.rules import MappingRules
from bridge.state.sqlite import SqliteStore
from tests.fakes import MemoryAdapter

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "alerts"
SAMPLES = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(FIXTURES.glob("*.json"))}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _set(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return document


@st.composite
def mutated_payloads(draw: st.DrawFn) -> Any:
    name = draw(st.sampled_from(sorted(SAMPLES)))
    document = copy.deepcopy(SAMPLES[name])
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        document = _set(document, path, draw(json_values))
    return document


def _exercise(payload: Any) -> None:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    try:
        alert = parse_alert(body)
    except PayloadError as exc:
        assert str(exc)
        return
    key = correlation_key(alert.alert_id)
    assert 0 < len(key) <= 100 and "^" not in key
    assert len(fingerprint(alert)) == 16
    item = build_work_item(alert, MappingRules())
    assert 0 < len(item.title) <= 160 and "\n" not in item.title
    assert alert.alert_id in item.description or len(alert.alert_id) > 4000
    assert update_note(alert)
    assert resolution(alert, MappingRules()).summary
    adapter = MemoryAdapter()
    store = SqliteStore(":memory:")
    try:
        reconciler = Reconciler(
            store, adapter, MappingRules(), RetryPolicy(), CmdbBinder(adapter, ttl_seconds=60), sleep=_no_sleep
        )
        canonical = canonical_payload(alert)
        print_ = fingerprint(alert, canonical)
        delivery = reconciler.deliver(alert, canonical, print_)

        assert delivery.status == "processed", delivery
        # Kept per alertId, or (a Service Health communication) per event: threads.place says.
        place = threads.place(alert, MappingRules())
        if place.thread is None:
            assert place.key == key == delivery.correlation_id
        else:
            key = place.key
            assert delivery.correlation_id == threads.episode_correlation(key, place.member)
        assert delivery.action in (Action.CREATED, Action.IGNORED)
        stored = store.load(key)
        assert stored is not None
        record = stored.record
        assert [e.fingerprint for e in record.events] == [print_]
        assert record.alert_id == alert.alert_id
        assert store.payload(key, print_) == canonical  # the outbox could rebuild the alert
        assert record.due is None and record.claim is None and record.dead is None
        creates = [op for op in adapter.ops() if op == "create"]
        if delivery.action is Action.CREATED:
            assert record.written == {print_: "created"}
            assert len(adapter.items) == 1 and len(creates) == 1
            assert adapter.items[0].item.correlation_id == delivery.correlation_id
            assert delivery.work_item is not None and delivery.work_item.id == adapter.items[0].ref.id
        else:
            # Only a Resolved with nothing to resolve is ignored on a first delivery: it stays
            # recorded (unwritten) for its Fired, and only a lookup reaches the ITSM.
            assert alert.is_resolved and not alert.is_stateless
            assert record.written == {} and record.resolved_event is not None and record.searched
            assert adapter.items == [] and adapter.ops() == ["find"]
            assert delivery.reason is not None and "resolution is recorded" in delivery.reason
    finally:
        store.close()


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"the in-memory adapter never fails, so nothing may wait ({seconds} s)")


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_payloads())
def test_mutated_samples_are_parsed_or_refused_cleanly(payload: Any) -> None:
    _exercise(payload)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(json_values)
def test_arbitrary_json_is_refused_cleanly(payload: Any) -> None:
    _exercise(payload)


# --------------------------------------------------------------------------- hostile text (issue 10, items 5 and 6)

# Loosely what ServiceNow's journal would take as its HTML markup, and script/data URLs.
CODE_TAG = re.compile(r"\[\s*/?\s*c\s*o\s*d\s*e\s*\]", re.IGNORECASE)
UNSAFE_URL = re.compile(r"(?:java|vb)[\t\n\r]*script[\t\n\r]*:|data:(?:[\w.+-]+/|[;,])", re.IGNORECASE)
HOSTILE = [
    "[code]<script>alert(1)</script>[/code]", "[ CODE ]", "[/ code]", "[c\to\nd e]", "[co\x00de]",
    "javascript:alert(1)", "JAVASCRIPT:x", "java\tscript:x", "\x01javascript:x", "vbscript:x",
    "data:text/html,<script>", "data:,x", "https://evil.example/", "https://portal.azure.com.evil.example/",
]
hostile_text = st.lists(st.sampled_from(HOSTILE) | st.text(max_size=8), min_size=1, max_size=5).map("".join)


@st.composite
def hostile_payloads(draw: st.DrawFn) -> Any:
    name = draw(st.sampled_from(sorted(SAMPLES)))
    document = copy.deepcopy(SAMPLES[name])
    strings = [p for p in _paths(document) if isinstance(_get(document, p), str) and p[-1] != "alertId"]
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        document = _set(document, draw(st.sampled_from(strings)), draw(hostile_text))
    return document


def _get(document: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        document = document[step]
    return document


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_payloads())
def test_hostile_text_never_reaches_a_work_item_as_markup_or_a_script_link(payload: Any) -> None:
    try:
        alert = parse_alert(json.dumps(payload).encode())
    except PayloadError:
        return
    item = build_work_item(alert, MappingRules(), ci_note="No CMDB configuration item found for [code]x[/code].")
    how = resolution(alert, MappingRules())
    for text in (item.title, item.description, item.note, update_note(alert), how.summary, how.note):
        assert not CODE_TAG.search(text), text
        assert not UNSAFE_URL.search(text), text
        assert "\x00" not in text and "\x01" not in text
    link = urlsplit(alert.portal_link)
    assert link.scheme == "https" and link.netloc == link.hostname
    host = link.hostname or ""
    assert host == "portal.azure.com" or host.endswith(".portal.azure.com")


json_text_values = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\,:ab ', max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.text(alphabet='[]{}"\\ab', max_size=6), children, max_size=3),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=300, deadline=None, derandomize=True)
@given(json_text_values, st.booleans())
def test_the_depth_scan_agrees_with_the_decoded_structure(value: Any, ascii_only: bool) -> None:
    from bridge.alerts import nesting_depth

    text = json.dumps(value, ensure_ascii=ascii_only)
    assert nesting_depth(text, limit=0) == _depth(value)
    # Under a limit the scan may answer with the bracket count, but it is over the limit exactly
    # when the structure is.
    for limit in (1, 2, 3):
        assert (nesting_depth(text, limit) > limit) == (_depth(value) > limit)
