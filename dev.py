#!/usr/bin/env python3
"""Developer entry point that needs only Python 3.11: it makes ``.venv`` and installs into it.

    python3 dev.py demo    # the whole job on the embedded sandbox (no cloud account)
    python3 dev.py test    # the test suite (also installs Azurite with npm, for the Azure backend's tests)
    python3 dev.py lint    # ruff and mypy
    python3 dev.py serve   # python -m bridge serve --sandbox

Extra arguments are passed on (``python3 dev.py test -k auth``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def _ensure_venv(requirements: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py must say so on an older Python
        sys.exit(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV.relative_to(ROOT)} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    req = ROOT / requirements
    # Reinstall only when the requirement files changed since the last install.
    inputs = [*sorted(ROOT.glob("requirements*.txt")), ROOT / "pyproject.toml"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in inputs)).hexdigest()
    stamp = VENV / f".installed-{req.stem}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"installing {requirements} ...", flush=True)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(req)],
        check=True,
    )
    if req.name == "requirements-dev.txt":
        # The project itself, editable and without its dependencies (just installed): this is
        # what registers the built-in adapters' entry points, which the registry tests check.
        subprocess.run(
            [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps", "-e", str(ROOT)],
            check=True,
        )
    stamp.write_text(digest)


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


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "demo":
        _ensure_venv("requirements.txt")
        return subprocess.call([str(PYTHON), "-m", "bridge", "demo", *rest], cwd=ROOT)
    if command == "serve":
        _ensure_venv("requirements.txt")
        return subprocess.call([str(PYTHON), "-m", "bridge", "serve", "--sandbox", *rest], cwd=ROOT)
    if command == "test":
        _ensure_venv("requirements-dev.txt")
        _ensure_node_modules()
        return subprocess.call([str(PYTHON), "-m", "pytest", *rest], cwd=ROOT)
    if command == "lint":
        _ensure_venv("requirements-dev.txt")
        code = subprocess.call([str(BIN / "ruff"), "check", "."], cwd=ROOT)
        return code or subprocess.call([str(BIN / "mypy")], cwd=ROOT)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
