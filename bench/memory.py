"""Memory: the bridge process's peak RSS after 10,000 alerts through ``serve``.

    python -m bench.memory [--alerts 10000] [--senders 8]

A fresh bridge process (``python -m bridge serve``, SQLite state) takes distinct new Fired alerts
from a few senders until every incident exists, at ITSM latency 0; then it is stopped and
``os.wait4`` reports its own peak resident set (``ru_maxrss``, as ``resource.getrusage`` would
inside it). The client and the stand-ins run in other processes and do not count.
"""

from __future__ import annotations

import argparse
import collections
import time

from bench.alerts import bodies
from bench.load import BridgeSender, run_senders, warm_up
from bench.procs import BridgeProcess, StandIns
from bench.report import Part, Target, print_figures

__all__ = ["measure"]

RSS_MIB = Target(150.0)


def measure(alerts: int = 10_000, senders: int = 8) -> Part:
    part = Part("memory")
    started = time.monotonic()
    with StandIns() as standins:
        bridge = BridgeProcess(standins.env)
        try:
            sender = BridgeSender(bridge.url, standins.token)
            warm_up(standins, sender, count=1)
            after_start = bridge.rss_mib()
            answers, _ = run_senders(senders, bodies(alerts), sender.send)
            taken = [a.key for a in answers if a.status in (200, 202)]
            created = standins.wait_created(taken, timeout=300) if taken else {}
            after_run = bridge.rss_mib()
        finally:
            usage = bridge.stop()
    part.seconds = time.monotonic() - started
    statuses = collections.Counter(str(a.status) for a in answers)
    note = f"{alerts} alerts from {senders} senders, {len(created)} incidents; answers {dict(statuses)}"
    part.add(f"bridge peak RSS after {alerts:,} alerts", usage.max_rss_mib, "MiB", RSS_MIB, note=note)
    if after_start is not None and after_run is not None:
        part.add("bridge RSS after the warm-up alert", after_start, "MiB")
        part.add(f"bridge RSS growth over {alerts:,} alerts", after_run - after_start, "MiB")
    part.details = {
        "alerts": alerts,
        "senders": senders,
        "statuses": dict(statuses),
        "max_rss_mib": usage.max_rss_mib,
        "rss_after_warm_up_mib": after_start,
        "rss_after_run_mib": after_run,
        "bridge_cpu_seconds": usage.cpu_seconds,
        "exit_code": usage.exit_code,
    }
    return part


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--senders", type=int, default=8)
    args = parser.parse_args()
    print_figures(measure(args.alerts, args.senders).figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
