"""Figures, their targets, and how they are printed and kept.

A part of the suite returns a :class:`Part`: its :class:`Figure` rows (each maybe with a
:class:`Target`, judged when printed, never asserted) and free-form details for the JSON file.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Figure",
    "Part",
    "Target",
    "bridge_calls",
    "delta",
    "machine",
    "markdown",
    "ms",
    "percentile",
    "print_figures",
    "summary",
    "write_json",
]


@dataclass(frozen=True)
class Target:
    """A bound a figure should meet: ``value <= bound`` (``at_most``) or ``value >= bound``."""

    bound: float
    at_most: bool = True
    text: str = ""  # how the issue words it, when that says more than the bound

    def met(self, value: float) -> bool:
        return value <= self.bound if self.at_most else value >= self.bound

    def __str__(self) -> str:
        return self.text or f"{'≤' if self.at_most else '≥'} {_number(self.bound)}"


@dataclass(frozen=True)
class Figure:
    """One measured number. ``value`` is None when the part could not measure it (see ``note``)."""

    part: str
    name: str
    value: float | None
    unit: str = ""
    target: Target | None = None
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        if self.value is None:
            return "n/a"
        return "pass" if self.target.met(self.value) else "FAIL"

    def as_json(self) -> dict[str, Any]:
        return {
            "part": self.part,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "target": None if self.target is None else str(self.target),
            "verdict": self.verdict,
            "note": self.note,
        }


@dataclass
class Part:
    """What one part measured: its figures and the details behind them."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(
        self, name: str, value: float | None, unit: str = "", target: Target | None = None, note: str = ""
    ) -> Figure:
        figure = Figure(self.name, name, value, unit, target, note)
        self.figures.append(figure)
        return figure


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method: a value that was measured."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """Count, mean, p50, p99 and max of durations, in milliseconds."""
    if not seconds:
        return {}
    return {
        "count": len(seconds),
        "mean_ms": sum(seconds) / len(seconds) * 1000,
        "p50_ms": percentile(seconds, 50) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
        "max_ms": max(seconds) * 1000,
    }


def ms(seconds: float | None) -> float | None:
    return None if seconds is None or math.isnan(seconds) else seconds * 1000


def delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    """Counters that grew between two readings, and by how much."""
    grown = {name: after.get(name, 0) - before.get(name, 0) for name in sorted(set(after) | set(before))}
    return {name: count for name, count in grown.items() if count}


def bridge_calls(calls: Mapping[str, int]) -> dict[str, int]:
    """The ITSM calls the bridge made (the stand-in counts the suite's bare writes apart)."""
    return {name: count for name, count in calls.items() if not name.startswith("bare ")}


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpus": os.cpu_count(),
        "load_average": None if load is None else [round(x, 2) for x in load],
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
    }


def _number(value: float) -> str:
    if float(value).is_integer() or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def print_figures(figures: Iterable[Figure], *, title: str | None = None) -> None:
    rows = [
        (
            f.part,
            f.name,
            "n/a" if f.value is None else f"{_number(f.value)} {f.unit}".strip(),
            "" if f.target is None else str(f.target),
            f.verdict,
            f.note,
        )
        for f in figures
    ]
    if title:
        print(f"\n{title}")
    header = ("part", "figure", "value", "target", "verdict", "note")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(5)]
    line = "  ".join(h.ljust(w) for h, w in zip(header[:5], widths, strict=True)) + "  " + header[5]
    print(line)
    print("-" * min(len(line) + 20, 140))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5], flush=True)


def markdown(figures: Iterable[Figure]) -> str:
    """The figures as a Markdown table (for the README's performance section)."""
    lines = ["| part | figure | value | target | verdict |", "| --- | --- | --- | --- | --- |"]
    for f in figures:
        value = "n/a" if f.value is None else f"{_number(f.value)} {f.unit}".strip()
        target = "" if f.target is None else str(f.target)
        lines.append(f"| {f.part} | {f.name} | {value} | {target} | {f.verdict} |")
    return "\n".join(lines)


def write_json(path: Path, parts: Sequence[Part], options: dict[str, Any], host: dict[str, Any]) -> None:
    document = {
        "machine": host,
        "options": options,
        "figures": [f.as_json() for part in parts for f in part.figures],
        "parts": {part.name: {"seconds": round(part.seconds, 2), **part.details} for part in parts},
    }
    path.write_text(json.dumps(document, indent=2, default=_jsonable) + "\n", encoding="utf-8")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)
