"""The deployment package carries hash-checked bytecode: a cold start does not compile the bridge,
and bytecode never outlives an edit of its source."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import dev  # noqa: E402 - the project's own developer entry point

# Counts what the import system compiles from source while importing the Function.
PROBE = """
import importlib._bootstrap_external as ext, json, sys
compiled = []
original = ext.SourceLoader.source_to_code
def counting(self, data, path, *, _optimize=-1):
    compiled.append(path)
    return original(self, data, path, _optimize=_optimize)
ext.SourceLoader.source_to_code = counting
import function_app
print(json.dumps({"compiled": compiled, "bridge": sys.modules["bridge"].__file__, "modules": sorted(sys.modules)}))
"""

SETTINGS = {
    "AUTH_TENANT_ID": "5c0f3a1e-9d7b-4e2a-8f61-2b4d6c8e0a13",
    "AUTH_AUDIENCES": "api://bridge-packaging-test",
    "SERVICENOW_INSTANCE_URL": "https://packaging.service-now.com",
    "SERVICENOW_USERNAME": "packaging",
    "SERVICENOW_PASSWORD": "not-a-secret",
    "STATE_STORE": "sqlite",
}


def stage(into: Path) -> None:
    """What the package holds, without any bytecode the working tree has."""
    shutil.copy2(REPO / "function_app.py", into / "function_app.py")
    shutil.copy2(REPO / "host.json", into / "host.json")
    shutil.copytree(
        REPO / "bridge",
        into / "bridge",
        ignore=lambda folder, names: [n for n in names if n == "__pycache__"]
        + (["sandbox"] if Path(folder).name == "bridge" else []),
    )


def import_function(package: Path, tmp_path: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "SERVICENOW_", "APPLICATIONINSIGHTS_"))}
    env.update(SETTINGS, STATE_SQLITE_PATH=str(tmp_path / "state.sqlite3"), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", PROBE], cwd=package, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(str(result["bridge"])).is_relative_to(package)
    return result


def bridge_sources(compiled: object) -> list[str]:
    assert isinstance(compiled, list)
    return sorted(str(Path(p).name) for p in compiled if "function_app" in p or f"{os.sep}bridge{os.sep}" in p)


def test_funcignore_ships_bytecode_and_leaves_the_sandbox_out() -> None:
    patterns = [line.strip() for line in (REPO / ".funcignore").read_text().splitlines()]
    assert "__pycache__" not in patterns and "*.pyc" not in patterns
    assert "bridge/sandbox" in patterns


def test_azd_compiles_before_packaging() -> None:
    text = (REPO / "azure.yaml").read_text()
    assert "prepackage:" in text
    assert "run: python3 dev.py compile" in text and "run: python dev.py compile" in text  # posix, windows


def test_a_cold_start_compiles_nothing_of_the_bridge(tmp_path: Path) -> None:
    package = tmp_path / "package"
    package.mkdir()
    stage(package)
    assert bridge_sources(import_function(package, tmp_path)["compiled"])  # without bytecode: all from source

    # As for Azure's Python, whichever this interpreter is: it imports what it compiled.
    assert dev.compile_package(package, python_version=dev.AZURE_PYTHON) == 0
    for source in [package / "function_app.py", *package.glob("bridge/**/*.py")]:
        os.utime(source, (1, 1))  # unpacked: other mtimes than when compiled
    assert bridge_sources(import_function(package, tmp_path)["compiled"]) == []

    # An edit after compiling is never hidden by the bytecode: that module is compiled again.
    errors = package / "bridge" / "errors.py"
    errors.write_text(errors.read_text() + "\n# edited after compiling\n")
    assert bridge_sources(import_function(package, tmp_path)["compiled"]) == ["errors.py"]


def test_bytecode_is_hash_checked_and_the_sandbox_is_not_compiled(tmp_path: Path) -> None:
    package = tmp_path / "package"
    package.mkdir()
    stage(package)
    shutil.copytree(REPO / "bridge" / "sandbox", package / "bridge" / "sandbox",
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert dev.compile_package(package, python_version=dev.AZURE_PYTHON) == 0
    tag = sys.implementation.cache_tag
    pyc = package / "bridge" / "__pycache__" / f"api.{tag}.pyc"
    flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
    assert flags == 0b11  # hash-based, checked against the source
    assert importlib.util.source_hash((package / "bridge" / "api.py").read_bytes()) == pyc.read_bytes()[8:16]
    assert not (package / "bridge" / "sandbox" / "__pycache__").exists()


def test_another_python_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = tmp_path / "package"
    package.mkdir()
    stage(package)
    assert dev.compile_package(package, python_version=(3, 99)) == 0
    assert not list(package.rglob("*.pyc"))
    assert "would not use its bytecode" in capsys.readouterr().err


def test_a_cold_start_imports_only_what_it_uses(tmp_path: Path) -> None:
    package = tmp_path / "package"
    package.mkdir()
    stage(package)
    modules = import_function(package, tmp_path)["modules"]
    assert isinstance(modules, list)
    # Each is imported when first needed: tenacity once an ITSM call fails, the Azure SDKs with
    # STATE_STORE=azure, OpenTelemetry with a connection string; uuid (and platform) not at all.
    unused = ("tenacity", "uuid", "platform", "opentelemetry", "azure.monitor", "azure.data", "azure.storage",
              "azure.identity", "bridge.sandbox", "bridge.otel", "bridge.adapters.jira")
    assert [m for m in modules if m.startswith(unused)] == []
    assert "bridge.adapters.servicenow" in modules and "bridge.runtime" in modules
