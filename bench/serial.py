"""Serial: one sender, the ITSM answering each request after a fixed latency (20 ms by default).

    python -m bench.serial [--alerts 200] [--latency-ms 20]

Each round writes one incident bare (straight to the stand-in's Table API) and sends one new
Fired alert to the bridge, alternately, so both meet the same machine load. The bridge's time
runs until its incident exists: its 200 answer when it was processed inline, else (202) the
moment the stand-in created it. The ratio is bare time / bridge time per alert: 1 would mean
the bridge costs nothing beyond the one write it has to make.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

from bench.alerts import bodies, new_key
from bench.load import Answer, BridgeSender, new_session, warm_up
from bench.procs import BridgeProcess, StandIns
from bench.report import Part, Target, bridge_calls, delta, ms, percentile, print_figures, summary

__all__ = ["measure"]

SERIAL_RATIO = Target(0.8, at_most=False)


def measure(alerts: int = 200, latency: float = 0.020) -> Part:
    part = Part("serial")
    started = time.monotonic()
    with StandIns() as standins, BridgeProcess(standins.env) as bridge:
        sender = BridgeSender(bridge.url, standins.token)
        writer = warm_up(standins, sender)
        standins.set_latency(latency)
        jobs = bodies(alerts)
        bare_jobs = [writer.job(f"bare-{new_key()}") for _ in range(alerts)]
        calls_before = standins.stats()["calls"]
        cpu_before = bridge.cpu_seconds()
        bridge_seconds: list[float] = []
        bare_seconds: list[float] = []
        statuses: collections.Counter[str] = collections.Counter()
        with new_session() as bare_session, new_session() as bridge_session:
            for job, bare_job in zip(jobs, bare_jobs, strict=True):
                bare = writer.send(bare_session, bare_job)
                if bare.status == 201:
                    bare_seconds.append(bare.seconds)
                answer = sender.send(bridge_session, job)
                statuses[f"{answer.status} {answer.action or ''}".strip()] += 1
                done = _until_created(standins, answer)
                if done is not None:
                    bridge_seconds.append(done)
        cpu_after = bridge.cpu_seconds()
        calls = bridge_calls(delta(standins.stats()["calls"], calls_before))
    part.seconds = time.monotonic() - started

    bridge_mean = statistics.fmean(bridge_seconds) if bridge_seconds else None
    bare_mean = statistics.fmean(bare_seconds) if bare_seconds else None
    note = f"{alerts} alerts, ITSM latency {latency * 1000:.0f} ms; answers {dict(statuses)}"
    part.add("bridge: POST until the incident exists", ms(bridge_mean), "ms/alert", note=note)
    part.add("bare write (same client, same stand-in)", ms(bare_mean), "ms/alert")
    ratio = bare_mean / bridge_mean if bridge_mean and bare_mean else None
    part.add("ratio bare / bridge", ratio, "", SERIAL_RATIO)
    part.add("bridge p50", ms(percentile(bridge_seconds, 50)) if bridge_seconds else None, "ms")
    part.add("bridge p99", ms(percentile(bridge_seconds, 99)) if bridge_seconds else None, "ms")
    itsm_calls = sum(calls.values()) / alerts
    part.add("ITSM calls per alert", itsm_calls, "", note=", ".join(f"{k} {v}" for k, v in sorted(calls.items())))
    if cpu_before is not None and cpu_after is not None:
        part.add("bridge CPU per alert", (cpu_after - cpu_before) / alerts * 1000, "ms", note="whole process")
    part.details = {
        "alerts": alerts,
        "latency_seconds": latency,
        "statuses": dict(statuses),
        "itsm_calls": calls,
        "bridge_seconds": summary(bridge_seconds),
        "bare_seconds": summary(bare_seconds),
    }
    return part


def _until_created(standins: StandIns, answer: Answer) -> float | None:
    """Seconds from sending until the answer was in and the incident existed (for a 202, the
    outbox creates it later); None when the bridge did not take the alert."""
    if answer.status not in (200, 202):
        return None
    created = standins.wait_created([answer.key])[answer.key]
    return max(answer.ended, created) - answer.started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    print_figures(measure(args.alerts, args.latency_ms / 1000).figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
