"""The processes a run needs besides the client: the stand-ins, and the bridge as ``serve`` runs it.

Three processes keep the figures honest: the client (this one), the stand-ins
(:mod:`bench.standin_host`) and the bridge (``python -m bridge serve``, the production code path
with its outbox worker). None shares an interpreter lock with another, and the bridge's memory
and CPU time are its own (read from /proc while it runs; ``os.wait4`` when it exits).

Both start from a minimal environment plus the sandbox's settings, so a developer's own bridge
settings (or ``APPLICATIONINSIGHTS_CONNECTION_STRING``) never change what is measured.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = ["ROOT", "BridgeProcess", "BridgeUsage", "StandIns", "base_env"]

ROOT = Path(__file__).resolve().parents[1]
_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT")
_START_SECONDS = 60.0


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What every child starts from: a few OS variables, unbuffered output, then ``extra``."""
    env = {name: os.environ[name] for name in _KEPT if name in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class _Lines:
    """A child's stdout, read by a thread so that a read can time out."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def next(self, timeout: float) -> str | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class StandIns:
    """The stand-in process: start it, steer its latency, ask when incidents were created."""

    def __init__(self, latency: float = 0.0) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="bench-standins-"))
        self._stderr_path = self._dir / "stderr.txt"
        self._stderr = self._stderr_path.open("w", encoding="utf-8")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.standin_host"],
            cwd=ROOT,
            env=base_env({"PYTHONPATH": str(ROOT)}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        assert self._proc.stdout is not None
        self._lines = _Lines(self._proc.stdout)
        self._lock = threading.Lock()
        hello = self._read(_START_SECONDS)
        self.env: dict[str, str] = dict(hello["env"])
        self.servicenow_url: str = hello["servicenow"]
        self.token: str = hello["token"]
        self.basic: tuple[str, str] = (hello["basic"][0], hello["basic"][1])
        if latency:
            self.set_latency(latency)

    def _read(self, timeout: float) -> dict[str, Any]:
        line = self._lines.next(timeout)
        if line is None:
            self.close()
            raise RuntimeError(f"the stand-in process did not answer:\n{_tail(self._stderr_path)}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the stand-in process refused a command: {answer['error']}")
        return answer

    def ask(self, op: str, **arguments: Any) -> dict[str, Any]:
        with self._lock:
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
            self._proc.stdin.flush()
            return self._read(30.0)

    def set_latency(self, seconds: float) -> None:
        self.ask("latency", seconds=seconds)

    def created(self, keys: Iterable[str]) -> dict[str, float | None]:
        times: dict[str, float | None] = self.ask("created", keys=list(keys))["times"]
        return times

    def wait_created(self, keys: Iterable[str], timeout: float = 60.0, poll: float = 0.002) -> dict[str, float]:
        """When each key's incident was created, waiting for those not there yet (KeyError after ``timeout``)."""
        wanted = list(keys)
        found: dict[str, float] = {}
        end = time.monotonic() + timeout
        while True:
            missing = [key for key in wanted if key not in found]
            for start in range(0, len(missing), 2000):
                times = self.created(missing[start : start + 2000])
                found.update({key: t for key, t in times.items() if t is not None})
            if len(found) == len(wanted):
                return found
            if time.monotonic() > end:
                raise KeyError(f"{len(wanted) - len(found)} incident(s) never appeared within {timeout:.0f} s")
            time.sleep(poll)

    def stats(self) -> dict[str, Any]:
        return self.ask("stats")

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(json.dumps({"op": "stop"}) + "\n")
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self._proc.kill()
                self._proc.wait()
        self._stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class BridgeUsage:
    """What the bridge process used, read when it exited. ``max_rss_mib`` is ``ru_maxrss``, which
    includes the spawning process's resident size (see :meth:`BridgeProcess.peak_rss_mib`)."""

    max_rss_mib: float
    cpu_seconds: float
    exit_code: int


def _season(path: Path) -> None:
    """Make the state file one that has kept records for a day: the steady state. A store in its
    first 15 minutes can vouch for no alert fired since (bridge/epoch.py), so every new Fired
    would keep its lookup, as it does for a bridge deployed minutes ago."""
    from bridge.epoch import RECORDS_SINCE
    from bridge.state.sqlite import SqliteStore

    store = SqliteStore(path)
    try:
        store.put_meta(RECORDS_SINCE, {"at": time.time() - 86400})
    finally:
        store.close()


class BridgeProcess:
    """``python -m bridge serve`` on a free port, with ``env`` over a minimal environment and a
    SQLite state file that has kept records for a day; ``stop()`` ends it with SIGTERM (as a service manager would) and
    returns its :class:`BridgeUsage`."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
        self._stderr_path = self._dir / "stderr.txt"
        self._stderr = self._stderr_path.open("w", encoding="utf-8")
        settings = {**env, "STATE_STORE": "sqlite", "STATE_SQLITE_PATH": str(self._dir / "state.sqlite3")}
        _season(self._dir / "state.sqlite3")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", "0"],
            cwd=ROOT,
            env=base_env({"PYTHONPATH": str(ROOT), **settings}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        assert self._proc.stdout is not None
        self._lines = _Lines(self._proc.stdout)
        self.usage: BridgeUsage | None = None
        self.url = self._await_url()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _await_url(self) -> str:
        end = time.monotonic() + _START_SECONDS
        while time.monotonic() < end:
            line = self._lines.next(end - time.monotonic())
            if line is None:
                break
            words = line.split()
            # "bridge 0.1.0 serving http://127.0.0.1:PORT/api/alerts and ..."
            if "serving" in words:
                url = words[words.index("serving") + 1]
                return url.removesuffix("/api/alerts")
        self.stop()
        raise RuntimeError(f"the bridge did not start serving:\n{_tail(self._stderr_path)}")

    def cpu_seconds(self) -> float | None:
        """User + system CPU time so far (Linux /proc; None elsewhere)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float | None:
        """Resident memory now (Linux /proc; None elsewhere)."""
        return self._status_mib("VmRSS:")

    def peak_rss_mib(self) -> float | None:
        """The highest resident memory so far (Linux /proc ``VmHWM``; None elsewhere).

        Unlike ``ru_maxrss`` this is the bridge's own: a child's ``ru_maxrss`` starts at the
        resident size of the process that spawned it (Linux carries the old image's high-water
        mark over ``exec``), so a big client would pass for a big bridge.
        """
        return self._status_mib("VmHWM:")

    def _status_mib(self, field: str) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self) -> BridgeUsage:
        if self.usage is not None:
            return self.usage
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        status, rusage = self._reap(timeout=20.0)
        self._stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        # ru_maxrss is in KiB on Linux, in bytes on macOS.
        rss = rusage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024) if rusage else math.nan
        cpu = rusage.ru_utime + rusage.ru_stime if rusage else math.nan
        self.usage = BridgeUsage(rss, cpu, status)
        return self.usage

    def _reap(self, timeout: float) -> tuple[int, Any]:
        """Wait for the child with wait4, which also returns the child's own resource usage."""
        if self._proc.returncode is not None:
            return self._proc.returncode, None
        end = time.monotonic() + timeout
        while True:
            pid, status, rusage = os.wait4(self._proc.pid, os.WNOHANG)
            if pid:
                code = os.waitstatus_to_exitcode(status)
                self._proc.returncode = code  # reaped here: Popen must not wait for it again
                return code, rusage
            if time.monotonic() > end:
                self._proc.kill()
                end = time.monotonic() + 5.0
            time.sleep(0.02)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
