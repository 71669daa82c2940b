#!/usr/bin/env python3
"""Developer entry point that needs only Python 3.11: it makes ``.venv`` and installs into it.

    python3 dev.py demo    # the whole job on the embedded sandbox (no cloud account)
    python3 dev.py test    # the test suite (also installs Azurite with npm, for the Azure backend's tests)
    python3 dev.py test-min  # the test suite again, on the lowest versions requirements.txt allows
    python3 dev.py lint    # ruff and mypy
    python3 dev.py serve   # python -m bridge serve --sandbox
    python3 dev.py send FILE... --url URL --sandbox-entra URL   # python -m bridge send
    python3 dev.py compile # bytecode for the deployment package (azd deploy runs it; run it before func publish)

Extra arguments are passed on (``python3 dev.py test -k auth``, ``python3 dev.py serve --port 7072``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
# test-min's environment: the lowest supported versions (git-ignored, like checkov's beside it).
MIN_VENV = ROOT / ".ci" / ".venv-min"


def _python(env: Path) -> Path:
    return env / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")


BIN = _python(VENV).parent
PYTHON = _python(VENV)


def _ensure_venv(requirements: str, *, env: Path = VENV, pins: str | None = None) -> None:
    """``env`` with ``requirements`` installed (and ``pins``, a file of == versions, holding them
    there), reinstalled only when a requirement file changed since the last install."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py must say so on an older Python
        sys.exit(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}")
    python = _python(env)
    if not python.exists():
        print(f"creating {env.relative_to(ROOT)} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(env)
    req = ROOT / requirements
    inputs = [*sorted(ROOT.glob("requirements*.txt")), ROOT / "pyproject.toml"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in inputs)).hexdigest()
    stamp = env / f".installed-{req.stem}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"installing {requirements}{f' with {pins}' if pins else ''} into {env.relative_to(ROOT)} ...", flush=True)
    # With pins, both files go to one resolution: a pin outside requirements.txt's range fails here.
    extra = ["-r", str(ROOT / pins)] if pins else []
    subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(req), *extra],
        check=True,
    )
    if req.name == "requirements-dev.txt":
        # The project itself, editable and without its dependencies (just installed): this is
        # what registers the built-in adapters' entry points, which the registry tests check.
        subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps", "-e", str(ROOT)],
            check=True,
        )
    stamp.write_text(digest)


def _requirements(name: str, operator: str) -> dict[str, str]:
    """{normalised package name: version} of the ``operator`` clauses in requirement file ``name``."""
    found: dict[str, str] = {}
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(.*)", line)
        if not match or line.startswith("-"):
            continue
        package = re.sub(r"[-_.]+", "-", match.group(1)).lower()
        for clause in match.group(2).split(","):
            if clause.strip().startswith(operator):
                found[package] = clause.strip()[len(operator):].strip()
    return found


def _check_min_pins() -> None:
    """requirements-min.txt must pin exactly the lower bound of every runtime requirement."""
    lower, pinned = _requirements("requirements.txt", ">="), _requirements("requirements-min.txt", "==")
    if lower != pinned:
        wrong = sorted(set(lower.items()) ^ set(pinned.items()))
        sys.exit(f"requirements-min.txt must pin each lower bound of requirements.txt (>= X as == X); differs: {wrong}")


def _ensure_node_modules() -> None:
    """Azurite (the Azure Storage emulator the tests run) from package-lock.json, once per lock change."""
    lock = ROOT / "package-lock.json"
    stamp = ROOT / "node_modules" / ".installed-lock"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and (ROOT / "node_modules" / ".bin" / "azurite").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("the tests need Node.js 20+ and npm (for Azurite); install them, e.g. apt-get install nodejs npm")
    print("installing node packages (azurite) ...", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=ROOT, check=True)
    stamp.write_text(digest)


# What the deployment package runs (.funcignore leaves out the rest, bridge/sandbox included).
PACKAGED_SOURCES = ("function_app.py", "bridge")
# The Python the Function app runs (infra/app/api.bicep: runtime python 3.11).
AZURE_PYTHON = (3, 11)


def compile_package(root: Path = ROOT, python_version: tuple[int, int] | None = None) -> int:
    """Write bytecode for the packaged modules, validated by source hash rather than by mtime.

    The deployment package is unpacked (new mtimes) onto a read-only mount, so without bytecode in
    it every cold start compiles the bridge from source, and timestamp-checked bytecode would be
    ignored. Hash-checked bytecode is used wherever its source is unchanged and never when it is
    not (a source edited after compiling is simply compiled at import, as without this step).
    """
    import compileall
    import py_compile

    version = python_version or sys.version_info[:2]
    if version != AZURE_PYTHON:
        print(
            f"dev.py compile: this is Python {version[0]}.{version[1]}; the Function runs "
            f"{AZURE_PYTHON[0]}.{AZURE_PYTHON[1]}, which would not use its bytecode (nothing written)",
            file=sys.stderr,
        )
        return 0
    mode = py_compile.PycInvalidationMode.CHECKED_HASH
    ok = compileall.compile_file(str(root / "function_app.py"), quiet=1, force=True, invalidation_mode=mode)
    ok &= compileall.compile_dir(
        str(root / "bridge"), quiet=1, force=True, invalidation_mode=mode, rx=re.compile(r"[/\\]sandbox[/\\]")
    )
    if not ok:
        return 1
    print("dev.py compile: hash-checked bytecode written for function_app.py and bridge/", flush=True)
    return 0


def _installed(python: str, packages: list[str]) -> dict[str, str]:
    """The versions of ``packages`` installed for ``python``."""
    script = "import sys\nfrom importlib.metadata import version\nfor p in sys.argv[1:]: print(p, version(p))"
    output = subprocess.run([python, "-c", script, *packages], check=True, capture_output=True, text=True).stdout
    return dict(line.split(" ", 1) for line in output.splitlines())


def _run(command: list[str]) -> int:
    """Run ``command`` in the foreground and return its exit code.

    Ctrl-C in a terminal reaches the child too (one process group): it stops by itself (``serve``
    cleanly, exit 0), so wait for it rather than die with a traceback and leave it behind. A
    second Ctrl-C, or a child still running 15 s later, ends it.
    """
    child = subprocess.Popen(command, cwd=ROOT)
    try:
        code = child.wait()
    except KeyboardInterrupt:
        try:
            code = child.wait(timeout=15)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            child.terminate()
            code = child.wait()
    return code if code >= 0 else 128 - code  # ended by a signal: 128 + its number, as shells say


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    if command == "demo":
        _ensure_venv("requirements.txt")
        return _run([str(PYTHON), "-m", "bridge", "demo", *rest])
    if command == "serve":
        _ensure_venv("requirements.txt")
        return _run([str(PYTHON), "-m", "bridge", "serve", "--sandbox", *rest])
    if command == "send":
        _ensure_venv("requirements.txt")
        return _run([str(PYTHON), "-m", "bridge", "send", *rest])
    if command == "test":
        _ensure_venv("requirements-dev.txt")
        _ensure_node_modules()
        return _run([str(PYTHON), "-m", "pytest", *rest])
    if command == "test-min":
        # The whole suite on the lowest versions requirements.txt allows: its lower bounds are
        # what is tested, not guessed. Its own environment, so .venv keeps the newest versions.
        _check_min_pins()
        _ensure_venv("requirements-dev.txt", env=MIN_VENV, pins="requirements-min.txt")
        _ensure_node_modules()
        python = str(_python(MIN_VENV))
        pins = sorted(_requirements("requirements-min.txt", "=="))
        print("testing with " + ", ".join(f"{p}=={v}" for p, v in sorted(_installed(python, pins).items())), flush=True)
        return _run([python, "-m", "pytest", *(rest or ["-q", "tests"])])
    if command == "compile":
        return compile_package()
    if command == "lint":
        _ensure_venv("requirements-dev.txt")
        code = _run([str(BIN / "ruff"), "check", "."])
        return code or _run([str(BIN / "mypy")])
    print(f"dev.py: unknown command {command!r}" if command else "dev.py: which command?", file=sys.stderr)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C while it installs: no traceback
        sys.exit(130)
