"""Azurite (the Azure Storage emulator) as a throw-away server for tests.

``Azurite().start()`` runs ``node_modules/.bin/azurite`` (installing azurite@3.35.0 with npm once
when it is missing: 3.36+ needs Node 21) on ports the OS picks, with its data in a temporary
directory, and returns when the Queue and Table ports accept connections. The ports are read from
Azurite's own start-up lines ("... successfully listening at http://127.0.0.1:PORT"), so two runs
never fight over a port. Missing Node or npm fails the test: the Azure backend is never skipped.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import pytest

from bridge.state.connection import DEVELOPMENT_ACCOUNT, DEVELOPMENT_KEY

__all__ = ["AZURITE_VERSION", "REPO_ROOT", "Azurite"]

AZURITE_VERSION = "3.35.0"
REPO_ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at http://127\.0\.0\.1:(\d+)")
_START_TIMEOUT_SECONDS = 60.0
_install_lock = threading.Lock()


def azurite_executable() -> Path:
    """``node_modules/.bin/azurite`` in the repository, installed with npm if it is not there yet."""
    executable = REPO_ROOT / "node_modules" / ".bin" / "azurite"
    with _install_lock:
        if not executable.exists():
            npm = shutil.which("npm")
            if npm is None:
                pytest.fail(
                    "Azurite is not installed and npm is not on PATH: install Node.js 20 and npm, then run "
                    f"`npm install --no-save --no-audit --no-fund azurite@{AZURITE_VERSION}` in {REPO_ROOT}",
                    pytrace=False,
                )
            done = subprocess.run(  # noqa: S603 - fixed arguments
                [npm, "install", "--no-save", "--no-audit", "--no-fund", f"azurite@{AZURITE_VERSION}"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if done.returncode != 0 or not executable.exists():
                pytest.fail(f"npm could not install azurite@{AZURITE_VERSION}:\n{done.stderr[-2000:]}", pytrace=False)
    if shutil.which("node") is None:
        pytest.fail("Azurite needs Node.js (20 for azurite 3.35.0), and `node` is not on PATH", pytrace=False)
    return executable


class Azurite:
    """One Azurite process; ``connection_string`` reaches its Queue and Table services."""

    def __init__(self, *, skip_api_version_check: bool = True) -> None:
        self.skip_api_version_check = skip_api_version_check
        self.ports: dict[str, int] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: str | None = None

    @property
    def queue_port(self) -> int:
        return self.ports["Queue"]

    @property
    def table_port(self) -> int:
        return self.ports["Table"]

    @property
    def connection_string(self) -> str:
        """The explicit-endpoint form (FACTS-storage 4); UseDevelopmentStorage needs the fixed ports."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEVELOPMENT_ACCOUNT};AccountKey={DEVELOPMENT_KEY};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{DEVELOPMENT_ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/{DEVELOPMENT_ACCOUNT};"
        )

    def start(self) -> Azurite:
        if self._process is not None:
            return self
        executable = azurite_executable()
        self._directory = tempfile.mkdtemp(prefix="azurite-")
        output = Path(self._directory) / "azurite.out"
        command = [
            str(executable),
            "--silent",
            "--location",
            self._directory,
            "--blobPort",
            "0",
            "--queuePort",
            "0",
            "--tablePort",
            "0",
            "--disableTelemetry",
        ]
        if self.skip_api_version_check:
            command.append("--skipApiVersionCheck")
        # Output goes to a file, not a pipe: nobody reads a pipe after start-up, and a full pipe
        # would block Azurite.
        with output.open("wb") as sink:
            self._process = subprocess.Popen(  # noqa: S603 - fixed arguments
                command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self._directory
            )
        try:
            self._await_ports(output)
        except BaseException:
            self.stop()
            raise
        return self

    def _await_ports(self, output: Path) -> None:
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while True:
            text = output.read_text(errors="replace")
            self.ports = {service: int(port) for service, port in _LISTENING.findall(text)}
            if {"Queue", "Table"} <= self.ports.keys() and all(_accepts(self.ports[s]) for s in ("Queue", "Table")):
                return
            if self._process.poll() is not None:
                pytest.fail(f"Azurite exited with {self._process.returncode}:\n{text[-2000:]}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Azurite did not start within {_START_TIMEOUT_SECONDS:.0f} s:\n{text[-2000:]}", pytrace=False
                )
            time.sleep(0.05)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A loopback port nothing listens on (at the moment of asking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
