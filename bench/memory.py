"""Memory: the bridge process's peak RSS after 10,000 alerts through ``serve``.

    python -m bench.memory [--alerts 10000] [--senders 8]

A fresh bridge process (``python -m bridge serve``, SQLite state) takes distinct new Fired alerts
from a few senders until every incident exists, at ITSM latency 0. The figure is its peak resident
set then (``VmHWM``, the high-water mark of its own memory). Not ``ru_maxrss`` (what
``resource.getrusage`` or ``os.wait4`` report): Linux carries the spawning process's high-water
mark over ``exec``, so a child's ``ru_maxrss`` is at least the size of whoever started it (the JSON
keeps it, for comparison; it is the figure only where /proc is missing). The client and the
stand-ins run in other processes and do not count. The resident set is also sampled while the
alerts go in, to show when a peak happens (the JSON keeps the samples).
"""

from __future__ import annotations

import argparse
import collections
import threading
import time

from bench.alerts import bodies
from bench.load import BridgeSender, run_senders, warm_up
from bench.procs import BridgeProcess, StandIns
from bench.report import Part, Target, print_figures

__all__ = ["measure"]

RSS_MIB = Target(150.0)


_EVERY = 0.25


class _Sampler:
    """Samples the bridge's resident memory in a thread (Linux /proc), to show when a peak happens."""

    def __init__(self, bridge: BridgeProcess) -> None:
        self._bridge = bridge
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._began = time.monotonic()
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MiB)

    def start(self) -> None:
        self._began = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._halt.wait(_EVERY):
            rss = self._bridge.rss_mib()
            if rss is not None:
                self.samples.append((round(time.monotonic() - self._began, 2), round(rss, 1)))

    @property
    def highest(self) -> float | None:
        return max((rss for _, rss in self.samples), default=None)


def measure(alerts: int = 10_000, senders: int = 8) -> Part:
    part = Part("memory")
    started = time.monotonic()
    with StandIns() as standins:
        bridge = BridgeProcess(standins.env)
        sampler = _Sampler(bridge)
        try:
            sender = BridgeSender(bridge.url, standins.token)
            warm_up(standins, sender, count=1)
            after_start = bridge.rss_mib()
            sampler.start()
            answers, _ = run_senders(senders, bodies(alerts), sender.send)
            taken = [a.key for a in answers if a.status in (200, 202)]
            created = standins.wait_created(taken, timeout=300) if taken else {}
            after_run = bridge.rss_mib()
            peak = bridge.peak_rss_mib()
        finally:
            sampler.stop()
            usage = bridge.stop()
    part.seconds = time.monotonic() - started
    statuses = collections.Counter(str(a.status) for a in answers)
    note = f"{alerts} alerts from {senders} senders, {len(created)} incidents; answers {dict(statuses)}"
    if peak is None:  # no /proc: ru_maxrss, which also counts what the spawning process held
        peak, note = usage.max_rss_mib, f"{note}; ru_maxrss (includes this client's RSS at spawn)"
    part.add(f"bridge peak RSS after {alerts:,} alerts", peak, "MiB", RSS_MIB, note=note)
    if after_start is not None and after_run is not None:
        part.add("bridge RSS after the warm-up alert", after_start, "MiB")
        part.add(f"bridge RSS once all {alerts:,} incidents exist", after_run, "MiB")
        part.add(
            "bridge RSS, highest sample while sending", sampler.highest, "MiB", note=f"sampled every {_EVERY} s"
        )
    part.details = {
        "alerts": alerts,
        "senders": senders,
        "statuses": dict(statuses),
        "peak_rss_mib": peak,
        "ru_maxrss_mib_including_spawning_process": usage.max_rss_mib,
        "rss_after_warm_up_mib": after_start,
        "rss_after_run_mib": after_run,
        "rss_samples_mib": sampler.samples,
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
