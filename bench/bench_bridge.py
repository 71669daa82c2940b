"""Benchmarks: where an alert's time and memory go. Prints numbers; asserts nothing.

    python bench/bench_bridge.py [--alerts 400] [--threads 4]

1. CPU cost of the pure steps (parse, correlate, map, verify a token with cached keys).
2. End to end over loopback HTTP: the local server + ServiceNow and Entra ID stand-ins, each
   alert a distinct Fired (lookup, CMDB binding, create), from several client threads.
3. Memory: tracemalloc peak while processing, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import sys
import threading
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests

from bridge.alerts import parse_alert
from bridge.auth import TokenVerifier
from bridge.config import MappingRules, Settings
from bridge.correlation import correlation_key, fingerprint
from bridge.mapping import build_work_item
from bridge.runtime import build_api
from bridge.sandbox.stack import SANDBOX_SUBSCRIPTION, SandboxStack, load_sample, sample_names
from bridge.server import BridgeServer


def per_call_us(fn: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def median_us(fn: Any, n: int = 300, runs: int = 5) -> float:
    return statistics.median(per_call_us(fn, n) for _ in range(runs))


def bench_pure(stack: SandboxStack) -> None:
    print("== CPU per step (median of 5 runs)")
    rules = MappingRules()
    for name in sample_names():
        raw = (Path(__file__).resolve().parents[1] / "bridge/sandbox/samples" / name).read_bytes()
        alert = parse_alert(raw)
        parse = median_us(lambda raw=raw: parse_alert(raw))
        mapping = median_us(lambda alert=alert: build_work_item(alert, rules))
        keys = median_us(lambda alert=alert: (correlation_key(alert.alert_id), fingerprint(alert)))
        print(f"  {name:52} parse {parse:7.1f} us   map {mapping:7.1f} us   key+fingerprint {keys:6.1f} us")
    settings = Settings.from_env(stack.bridge_env())
    verifier = TokenVerifier(settings)
    token = f"Bearer {stack.token()}"
    verifier.verify(token)  # warm the key cache
    verify = median_us(lambda: verifier.verify(token))
    print(f"  token verification (RS256, keys cached)              {verify:7.1f} us")


def bench_end_to_end(stack: SandboxStack, alerts: int, threads: int, *, trace_memory: bool) -> None:
    what = "memory (tracemalloc on, slower)" if trace_memory else "speed"
    print(f"\n== end to end over loopback, {what}: {alerts} distinct Fired alerts, {threads} client threads")
    api = build_api(stack.bridge_env(ALLOWED_SUBSCRIPTION_IDS=SANDBOX_SUBSCRIPTION))
    base = load_sample("metric_static_fired.testaction.json")
    token = stack.token()
    payloads = []
    for _ in range(alerts):
        p = copy.deepcopy(base)
        p["data"]["essentials"]["alertId"] = (
            f"/subscriptions/{SANDBOX_SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{uuid.uuid4()}"
        )
        payloads.append(p)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    with BridgeServer(api, port=0) as server:
        url = f"{server.url}/api/alerts"

        def worker(chunk: list[dict[str, Any]]) -> None:
            with requests.Session() as http:
                for payload in chunk:
                    t0 = time.perf_counter()
                    r = http.post(url, json=payload, headers={"Authorization": f"Bearer {token}"}, timeout=30)
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies.append(dt)
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        if trace_memory:
            tracemalloc.start()
        started = time.perf_counter()
        pool = [threading.Thread(target=worker, args=(payloads[i::threads],)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] if trace_memory else 0
        tracemalloc.stop()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    incidents = len(stack.servicenow.records("incident"))
    print(f"  statuses {statuses}; incidents created {incidents}")
    if trace_memory:
        print(f"  tracemalloc peak during the run {peak / 1024 / 1024:6.1f} MiB")
        return
    print(f"  throughput {alerts / elapsed:7.1f} alerts/s   wall {elapsed:.2f} s")
    print(f"  latency p50 {q[49] * 1000:6.1f} ms   p95 {q[94] * 1000:6.1f} ms   max {latencies[-1] * 1000:6.1f} ms")
    print("  (each alert: 1 incident lookup + CMDB lookups (cached after the first) + 1 create, all HTTP)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  process peak RSS (bridge + both stand-ins + clients in one process) {rss:6.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=400)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpu(s)")
    with SandboxStack() as stack:
        bench_pure(stack)
        bench_end_to_end(stack, args.alerts, args.threads, trace_memory=False)
    with SandboxStack() as stack:
        bench_end_to_end(stack, args.alerts, args.threads, trace_memory=True)


if __name__ == "__main__":
    main()
