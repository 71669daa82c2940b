"""Storm: 32 senders, the ITSM answering each request after 50 ms, 2,000 distinct new alerts.

    python -m bench.storm [--alerts 2000] [--senders 32] [--latency-ms 50]

Three phases against one stand-in process, each from the same 32 sender threads:

1. the stand-in alone at latency 0 (bare writes as fast as it takes them): its capacity, which
   must stay well above what the bridge asks of it, or the stand-in is what is measured;
2. bare writes at the storm latency: the floor, the same incidents written straight;
3. the bridge: every alert sent, throughput counted until every incident exists (a 202 answer is
   finished when the outbox has created its incident), p50/p99 of the bridge's own answers.

The ratio is bridge alerts/s / bare writes/s.
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from pathlib import Path

from bench.alerts import bodies, new_key
from bench.load import Answer, BareWriter, BridgeSender, run_senders, warm_up
from bench.procs import BridgeProcess, StandIns
from bench.report import Part, Target, bridge_calls, delta, ms, percentile, print_figures, summary

__all__ = ["measure"]

STORM_RATIO = Target(0.8, at_most=False)
STORM_P99_MS = Target(250.0)


def measure(alerts: int = 2000, senders: int = 32, latency: float = 0.050, capacity_writes: int | None = None) -> Part:
    part = Part("storm")
    started = time.monotonic()
    capacity_writes = capacity_writes or alerts
    with StandIns() as standins, BridgeProcess(standins.env) as bridge:
        sender = BridgeSender(bridge.url, standins.token)
        writer = warm_up(standins, sender)

        standins.set_latency(0.0)
        capacity = _bare(writer, senders, capacity_writes)
        standins.set_latency(latency)
        machine = _MachineCpu()
        bare = _bare(writer, senders, alerts)
        bare_cpus = machine.busy()

        jobs = bodies(alerts)
        calls_before = standins.stats()["calls"]
        cpu_before = bridge.cpu_seconds()
        machine = _MachineCpu()
        answers, began = run_senders(senders, jobs, sender.send)
        taken = [a for a in answers if a.status in (200, 202)]
        created = standins.wait_created([a.key for a in taken], timeout=120) if taken else {}
        finished = max([*created.values(), *(a.ended for a in answers)])
        cpu_after = bridge.cpu_seconds()
        storm_cpus = machine.busy()
        stats = standins.stats()
        calls = bridge_calls(delta(stats["calls"], calls_before))
    part.seconds = time.monotonic() - started

    statuses = collections.Counter(f"{a.status} {a.action or ''}".strip() for a in answers)
    throughput = len(taken) / (finished - began)
    seconds = [a.seconds for a in answers]
    note = f"{alerts} alerts, {senders} senders, ITSM latency {latency * 1000:.0f} ms; answers {dict(statuses)}"
    part.add("bridge: alerts/s until every incident exists", throughput, "alerts/s", note=note)
    part.add("bare writes/s (same senders, same stand-in)", bare.rate, "writes/s")
    part.add("ratio bridge / bare", throughput / bare.rate if bare.rate else None, "", STORM_RATIO)
    part.add("bridge answers p50", ms(percentile(seconds, 50)), "ms")
    part.add("bridge answers p99", ms(percentile(seconds, 99)), "ms", STORM_P99_MS)
    part.add("bare writes p99", ms(percentile(bare.seconds, 99)), "ms")
    shown = ", ".join(f"{name} {count}" for name, count in calls.items())
    part.add("ITSM calls per alert", sum(calls.values()) / alerts, "", note=shown)
    part.add(
        "incidents missing / duplicated",
        (alerts - len(created)) + stats["duplicates"],
        "",
        Target(0),
        note=f"{len(created)} of {alerts} created, {stats['duplicates']} duplicates",
    )
    needed = throughput * sum(calls.values()) / alerts
    part.add(
        "stand-in alone (latency 0): capacity",
        capacity.rate,
        "writes/s",
        note=f"{capacity_writes} bare writes; the bridge asked {needed:.0f} requests/s of it",
    )
    if cpu_before is not None and cpu_after is not None:
        part.add("bridge CPU per alert", (cpu_after - cpu_before) / alerts * 1000, "ms", note="whole process")
    if bare_cpus is not None and storm_cpus is not None:
        # Whether the machine, not the ITSM's latency, is the bound: CPUs busy (all processes).
        part.add("machine CPUs busy: bare writes / bridge storm", storm_cpus, "CPUs",
                 note=f"bare writes {bare_cpus:.2f} of {os.cpu_count()}; bridge storm {storm_cpus:.2f}")
    part.details = {
        "alerts": alerts,
        "senders": senders,
        "latency_seconds": latency,
        "statuses": dict(statuses),
        "itsm_calls": calls,
        "bridge_alerts_per_second": throughput,
        "bridge_answers": summary(seconds),
        "bare_writes_per_second": bare.rate,
        "bare_writes": summary(bare.seconds),
        "standin_capacity_writes_per_second": capacity.rate,
        "duplicates": stats["duplicates"],
        "missing": alerts - len(created),
        "machine_cpus_busy": {"bare": bare_cpus, "storm": storm_cpus},
    }
    return part


class _MachineCpu:
    """CPUs busy (all processes) between its creation and :meth:`busy`, from /proc/stat (Linux)."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float] | None:
        try:
            fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    def busy(self) -> float | None:
        end = self._read()
        if self._start is None or end is None or end[1] <= self._start[1]:
            return None
        share = (end[0] - self._start[0]) / (end[1] - self._start[1])
        return share * (os.cpu_count() or 1)


class _Rate:
    def __init__(self, answers: list[Answer], began: float) -> None:
        ok = [a for a in answers if a.status == 201]
        self.seconds = [a.seconds for a in ok]
        end = max((a.ended for a in answers), default=began)
        self.rate = len(ok) / (end - began) if end > began else 0.0


def _bare(writer: BareWriter, senders: int, count: int) -> _Rate:
    jobs = [writer.job(f"bare-{new_key()}") for _ in range(count)]
    answers, began = run_senders(senders, jobs, writer.send)
    return _Rate(answers, began)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    print_figures(measure(args.alerts, args.senders, args.latency_ms / 1000).figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
