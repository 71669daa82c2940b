"""Cold start: ``import function_app`` in fresh interpreters against its floor.

    python -m bench.cold_import [--runs 9]

The floor is ``import azure.functions, requests, jwt``: the libraries the Function cannot do
without. Each run is a new process timing its own import (interpreter start-up, the same for
both, is left out); runs of the two alternate so both meet the same machine load; the figure is
the median. Both run with the same minimal environment: valid settings (SQLite state, an ITSM
and Entra ID that are never called: building the runtime at import sends nothing) and no
``APPLICATIONINSIGHTS_CONNECTION_STRING``.

The Function is imported from a staged copy of what the deployment package holds (``host.json``,
``function_app.py``, ``bridge/`` without ``bridge/sandbox``), and no bytecode is written while it
runs (the package is read-only in Azure). When ``.funcignore`` leaves out ``*.pyc``/``__pycache__``
(as it did before ``dev.py compile``), the copy has no bytecode, so the bridge compiles from source
at every start; otherwise the copy is compiled first, hash-checked, as ``dev.py compile`` does. The
same import from the working tree (bytecode cached) is reported too.
"""

from __future__ import annotations

import argparse
import compileall
import json
import py_compile
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import ROOT, base_env
from bench.report import Part, Target, print_figures

__all__ = ["measure"]

COLD_RATIO = Target(1.15)
FLOOR = "azure.functions, requests, jwt"
_PROBE = (
    "import time, sys\n"
    "t = time.perf_counter()\n"
    "import {modules}\n"
    "t = time.perf_counter() - t\n"
    "origin = getattr(sys.modules.get('bridge'), '__file__', None)\n"
    "print(__import__('json').dumps({{'seconds': t, 'bridge': origin}}))\n"
)


def _package_drops_bytecode() -> bool:
    patterns = [line.strip() for line in (ROOT / ".funcignore").read_text().splitlines()]
    return any(p in ("*.pyc", "__pycache__", "__pycache__/") for p in patterns)


def _stage(into: Path, *, compiled: bool) -> None:
    shutil.copy2(ROOT / "function_app.py", into / "function_app.py")
    shutil.copy2(ROOT / "host.json", into / "host.json")
    shutil.copytree(
        ROOT / "bridge",
        into / "bridge",
        ignore=lambda folder, names: [n for n in names if n == "__pycache__" or n.endswith(".pyc")]
        + (["sandbox"] if Path(folder).name == "bridge" else []),
    )
    if compiled:
        # As `python3 dev.py compile` writes it for the package: validated by source hash, so the
        # copy's new mtimes (like an unpacked deployment's) do not make Python compile again.
        mode = py_compile.PycInvalidationMode.CHECKED_HASH
        compileall.compile_file(str(into / "function_app.py"), quiet=1, invalidation_mode=mode)
        compileall.compile_dir(into / "bridge", quiet=1, invalidation_mode=mode)


def _settings(state: Path) -> dict[str, str]:
    return {
        "AUTH_TENANT_ID": "5c0f3a1e-9d7b-4e2a-8f61-2b4d6c8e0a13",
        "AUTH_AUDIENCES": "api://azure-monitor-bridge-bench",
        "ITSM_ADAPTER": "servicenow",
        "SERVICENOW_INSTANCE_URL": "https://bench.service-now.com",
        "SERVICENOW_USERNAME": "bench",
        "SERVICENOW_PASSWORD": "bench",  # a placeholder: nothing is ever sent
        "STATE_STORE": "sqlite",
        "STATE_SQLITE_PATH": str(state / "state.sqlite3"),
    }


def _once(modules: str, cwd: Path, env: dict[str, str]) -> tuple[float, str | None]:
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", _PROBE.format(modules=modules)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"import {modules} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["seconds"]), result["bridge"]


def measure(runs: int = 9) -> Part:
    part = Part("cold_import")
    started = time.monotonic()
    staged = Path(tempfile.mkdtemp(prefix="bench-package-"))
    try:
        source_only = _package_drops_bytecode()
        package = staged / "package"
        package.mkdir()
        _stage(package, compiled=not source_only)
        env = base_env({**_settings(staged), "PYTHONDONTWRITEBYTECODE": "1"})
        timings: dict[str, list[float]] = {"package": [], "tree": [], "floor": []}
        for _ in range(runs):
            seconds, origin = _once("function_app", package, env)
            if origin is None or not Path(origin).is_relative_to(package):
                raise RuntimeError(f"the staged function_app imported bridge from {origin}")
            timings["package"].append(seconds)
            timings["floor"].append(_once(FLOOR, package, env)[0])
            timings["tree"].append(_once("function_app", ROOT, env)[0])
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    part.seconds = time.monotonic() - started
    median = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    how = "from source (no .pyc, as .funcignore packages it)" if source_only else "with .pyc (as packaged)"
    part.add("import function_app, as deployed", median["package"], "ms", note=f"median of {runs}; {how}")
    part.add(f"floor: import {FLOOR}", median["floor"], "ms", note=f"median of {runs}")
    part.add("ratio deployed / floor", median["package"] / median["floor"], "times", COLD_RATIO)
    part.add("import function_app, working tree (.pyc cached)", median["tree"], "ms")
    part.add("ratio working tree / floor", median["tree"] / median["floor"], "times")
    part.details = {
        "runs": runs,
        "source_only_package": source_only,
        "median_ms": median,
        "all_ms": {name: [round(v * 1000, 1) for v in values] for name, values in timings.items()},
    }
    return part


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    print_figures(measure(args.runs).figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
