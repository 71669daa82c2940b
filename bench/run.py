"""The whole benchmark suite in one command; prints every figure beside its target.

    python -m bench [--quick] [--only serial,storm] [--json results.json] [sizes...]
    python bench/run.py ...

Parts (each also runs alone as ``python -m bench.<part>``):

  itsm_calls   ITSM calls per event type (new Fired, redeliveries, Resolved, out of order)
  serial       one sender, ITSM at 20 ms: POST until the incident exists, bridge vs bare write
  storm        32 senders, ITSM at 50 ms, 2,000 alerts: alerts/s vs bare writes/s, answer p50/p99,
               and the stand-in's own capacity (it must not be the bottleneck)
  inprocess    in-process cost per stage (token, parse, key, map, reconcile, whole request)
  memory       the bridge process's peak RSS after 10,000 alerts
  cold_import  ``import function_app`` in fresh interpreters vs its floor

Targets are those of issue #12; a figure that misses one is printed FAIL, nothing is asserted:
the exit status is 0 unless a part crashed (then 1). The machine is printed first, with its load
average: on a shared machine, run twice and compare.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    # ``python bench/run.py``: make the repository importable, as ``python -m bench`` does.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cold_import, inprocess, itsm_calls, memory, serial, storm
from bench.report import Part, machine, markdown, print_figures, write_json

__all__ = ["PARTS", "Sizes", "main"]

PARTS = ("itsm_calls", "serial", "storm", "inprocess", "memory", "cold_import")


@dataclass(frozen=True)
class Sizes:
    serial_alerts: int = 200
    serial_latency_ms: float = 20.0
    storm_alerts: int = 2000
    storm_senders: int = 32
    storm_latency_ms: float = 50.0
    capacity_writes: int = 2000
    iterations: int = 2000
    rounds: int = 3
    memory_alerts: int = 10_000
    memory_senders: int = 8
    cold_runs: int = 9


QUICK = Sizes(
    serial_alerts=20,
    storm_alerts=200,
    capacity_writes=200,
    iterations=300,
    rounds=1,
    memory_alerts=1000,
    cold_runs=3,
)


def _runners(sizes: Sizes) -> dict[str, Callable[[], Part]]:
    return {
        "itsm_calls": itsm_calls.measure,
        "serial": lambda: serial.measure(sizes.serial_alerts, sizes.serial_latency_ms / 1000),
        "storm": lambda: storm.measure(
            sizes.storm_alerts, sizes.storm_senders, sizes.storm_latency_ms / 1000, sizes.capacity_writes
        ),
        "inprocess": lambda: inprocess.measure(sizes.iterations, sizes.rounds),
        "memory": lambda: memory.measure(sizes.memory_alerts, sizes.memory_senders),
        "cold_import": lambda: cold_import.measure(sizes.cold_runs),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run of a few seconds per part)")
    parser.add_argument("--only", help=f"comma list of parts to run: {', '.join(PARTS)}")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write machine, options and figures as JSON")
    parser.add_argument("--markdown", action="store_true", help="also print the figures as a Markdown table")
    defaults = Sizes()
    for name, value in vars(defaults).items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=type(value), default=None, metavar="N", help=f"default {value}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    base = QUICK if args.quick else Sizes()
    chosen = {name: getattr(args, name) for name in vars(base) if getattr(args, name) is not None}
    sizes = Sizes(**{**vars(base), **chosen})
    wanted = [p.strip() for p in args.only.split(",")] if args.only else list(PARTS)
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        print(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}", file=sys.stderr)
        return 2

    host = {**machine(), "commit": _commit()}
    load = host["load_average"]
    print(
        f"machine: {host['cpus']} CPU(s), {host['implementation']} {host['python']}, {host['platform']}"
        + (f", load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}" if load else "")
        + (f"; commit {host['commit']}" if host["commit"] else ""),
        flush=True,
    )
    parts: list[Part] = []
    crashed: list[str] = []
    runners = _runners(sizes)
    for name in wanted:
        started = time.monotonic()
        print(f"== {name} ...", end=" ", flush=True)
        try:
            part = runners[name]()
        except Exception:
            crashed.append(name)
            print("crashed")
            traceback.print_exc()
            continue
        part.seconds = time.monotonic() - started
        parts.append(part)
        print(f"{part.seconds:.1f} s", flush=True)

    title = "Figures (targets from issue #12; FAIL = target missed)"
    print_figures([f for part in parts for f in part.figures], title=title)
    after = machine()["load_average"]
    host["load_average_at_end"] = after
    if after:
        print(f"\nload average at the end: {after[0]:.2f} / {after[1]:.2f} / {after[2]:.2f}")
    if args.markdown:
        print("\n" + markdown(f for part in parts for f in part.figures))
    if args.json:
        write_json(args.json, parts, {"quick": args.quick, "parts": wanted, **vars(sizes)}, host)
        print(f"figures written to {args.json}")
    if crashed:
        print(f"crashed: {', '.join(crashed)}", file=sys.stderr)
        return 1
    return 0


def _commit() -> str | None:
    """The commit measured (with ``+`` when tracked files differ from it), if this is a git checkout."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+" if dirty else "")


def _git(*args: str) -> str:
    command = ["git", *args]  # git from PATH, only to label the figures
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=10, check=True)  # noqa: S603
    return done.stdout.strip()


if __name__ == "__main__":
    raise SystemExit(main())
