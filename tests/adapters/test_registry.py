"""Every registered ITSM adapter is tested, declared and registered the way the design promises.

The meta-tests discover adapters the way the bridge does (:func:`bridge.adapters.registry.references`:
the built-ins plus every installed ``bridge.adapters`` entry point), so an adapter added by a
module or an installed package is held to the same rules without editing this file:

* ``tests/adapters/test_<name>.py`` runs the shared contract (:class:`~tests.adapters.contract.AdapterContract`)
  twice: over its ``responses`` fake and over its stand-in on real sockets;
* its settings are declared once, with names unique across the core and every adapter, and
  credentials marked secret;
* a built-in is registered in ``pyproject.toml`` as an entry point too, so the installed package
  and the deployed source agree.

Then the registry's own behaviour: unknown names, plugins, names that do not match.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest

from bridge.adapters import registry
from bridge.adapters.base import ItsmAdapter
from bridge.config import SETTINGS, Setting, Settings
from bridge.errors import ConfigError

from .contract import FAKE_KINDS, AdapterContract

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ADAPTER_NAMES = sorted(registry.references())
# A setting holding a credential: a name segment like these (JIRA_PAT, SERVICENOW_CLIENT_SECRET...).
_CREDENTIAL_SEGMENTS = frozenset({"PASSWORD", "PASSPHRASE", "SECRET", "TOKEN", "PAT", "CREDENTIAL", "CREDENTIALS"})
_CREDENTIAL_SUFFIXES = ("_API_KEY", "_ACCESS_KEY", "_PRIVATE_KEY", "_CLIENT_KEY", "_SHARED_KEY")
# ItsmAdapter's members: its annotated class attributes and its methods.
_PROTOCOL_MEMBERS = sorted(set(ItsmAdapter.__annotations__) | {k for k in vars(ItsmAdapter) if not k.startswith("_")})
_SETTING_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*\Z")


def _looks_like_a_credential(name: str) -> bool:
    return bool(_CREDENTIAL_SEGMENTS & set(name.split("_"))) or name.endswith(_CREDENTIAL_SUFFIXES)


def _test_module(name: str) -> ModuleType:
    path = HERE / f"test_{name}.py"
    assert path.is_file(), f"adapter {name!r} has no test module {path.relative_to(ROOT)}"
    return importlib.import_module(f"{__package__}.test_{name}")


def _contract_runs(module: ModuleType, name: str) -> dict[str, list[str]]:
    """fake kind -> names of the contract subclasses in ``module`` that test adapter ``name``."""
    runs: dict[str, list[str]] = {}
    for class_name, cls in inspect.getmembers(module, inspect.isclass):
        if not issubclass(cls, AdapterContract) or cls is AdapterContract or cls.__module__ != module.__name__:
            continue
        if cls.adapter_name != name:
            continue
        runs.setdefault(cls.fake_kind, []).append(class_name)
    return runs


# ===================================================================== every adapter


@pytest.mark.parametrize("name", ADAPTER_NAMES)
class TestEveryRegisteredAdapter:
    def test_loads_and_calls_itself_by_its_name(self, name: str) -> None:
        cls = registry.adapter_class(name)

        assert cls.name == name
        assert inspect.isclass(cls)
        for attribute in _PROTOCOL_MEMBERS:
            assert hasattr(cls, attribute), f"{cls.__qualname__} lacks {attribute}"

    def test_runs_the_contract_over_both_fakes(self, name: str) -> None:
        module = _test_module(name)

        runs = _contract_runs(module, name)

        for kind in FAKE_KINDS:
            assert runs.get(kind), (
                f"{module.__name__} needs a subclass of AdapterContract with adapter_name = {name!r} "
                f"and fake_kind = {kind!r}"
            )
        assert set(runs) <= set(FAKE_KINDS), f"unknown fake_kind in {module.__name__}: {sorted(runs)}"
        for class_name in (c for classes in runs.values() for c in classes):
            assert class_name.startswith("Test"), f"{class_name} would not be collected by pytest"

    def test_declares_its_settings(self, name: str) -> None:
        declared = registry.settings_of(name)

        assert declared, f"adapter {name!r} declares no settings"
        assert all(isinstance(s, Setting) for s in declared)
        names = [s.name for s in declared]
        assert len(names) == len(set(names)), f"{name}: settings declared twice: {names}"
        core = {s.name for s in SETTINGS}
        assert not core & set(names), f"{name} redeclares core settings {sorted(core & set(names))}"
        for setting in declared:
            assert _SETTING_NAME.match(setting.name), setting.name
            assert setting.help.strip(), f"{setting.name} has no help text"
            if _looks_like_a_credential(setting.name):
                assert setting.secret, f"{setting.name} holds a credential and must be marked secret"
            if setting.secret:
                assert setting.default is None, f"secret {setting.name} must not have a default"
            if setting.required:
                assert setting.default is None, f"required {setting.name} has a default"

    def test_settings_do_not_collide_with_another_adapter(self, name: str) -> None:
        mine = {s.name for s in registry.settings_of(name)}
        for other in ADAPTER_NAMES:
            if other != name:
                shared = mine & {s.name for s in registry.settings_of(other)}
                assert not shared, f"{name} and {other} both declare {sorted(shared)}"

    def test_a_builtin_is_an_entry_point_of_the_project(self, name: str) -> None:
        project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        declared = project["project"]["entry-points"][registry.GROUP]

        if name in registry.BUILTIN:
            assert declared.get(name) == registry.BUILTIN[name]
        installed = {point.name: point.value for point in entry_points(group=registry.GROUP)}
        if name in declared:
            # The editable install is current: what pyproject.toml says is what importlib sees.
            assert installed.get(name) == declared[name], "reinstall the project (pip install -e .)"


def test_every_builtin_is_declared_and_every_declared_one_is_builtin() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["entry-points"][registry.GROUP] == dict(registry.BUILTIN)


def test_every_adapter_test_module_is_registered() -> None:
    # The other direction: a contract run for an adapter the registry does not know is a typo.
    for path in sorted(HERE.glob("test_*.py")):
        if path.stem == "test_registry":
            continue
        module = importlib.import_module(f"{__package__}.{path.stem}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, AdapterContract) and cls.__module__ == module.__name__:
                assert cls.adapter_name in ADAPTER_NAMES, f"{cls.__qualname__}: unknown adapter {cls.adapter_name!r}"
                assert path.stem == f"test_{cls.adapter_name}"


# ===================================================================== the registry


TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def _settings(**extra: str) -> Settings:
    return Settings.from_env({"AUTH_TENANT_ID": TENANT, "AUTH_AUDIENCES": "api://bridge", **extra})


class PluginAdapter:
    """What a third-party package would register (enough of one for the registry)."""

    name: ClassVar[str] = "remedy"
    display_name: ClassVar[str] = "BMC Remedy"
    settings: ClassVar[tuple[Setting, ...]] = (Setting("REMEDY_URL", "server URL", required=True),)
    built: ClassVar[list[tuple[Settings, Any]]] = []

    @classmethod
    def from_settings(cls, settings: Settings, session: Any = None) -> PluginAdapter:
        cls.built.append((settings, session))
        return cls()


class MisnamedAdapter(PluginAdapter):
    name: ClassVar[str] = "helix"


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EntryPoint]]:
    """Installed entry points, as the test wants them (the real ones are replaced)."""
    points: list[EntryPoint] = []

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        return [p for p in points if p.group == group]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    PluginAdapter.built.clear()
    yield points


def _point(name: str, value: str, group: str = registry.GROUP) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=group)


class TestRegistry:
    def test_references_are_the_builtins_plus_installed_plugins(self) -> None:
        found = registry.references()

        assert list(found)[: len(registry.BUILTIN)] == list(registry.BUILTIN)
        for point in entry_points(group=registry.GROUP):
            assert found[point.name.strip().lower()] == point.value

    @pytest.mark.parametrize("value", ["remedy", "", "  ", "servicenow2", "../servicenow"])
    def test_unknown_adapter_is_a_config_error_naming_itsm_adapter(self, value: str) -> None:
        with pytest.raises(ConfigError) as caught:
            registry.adapter_class(value)

        assert caught.value.setting == "ITSM_ADAPTER"
        for known in registry.BUILTIN:
            assert known in str(caught.value)
        if value.strip():
            assert value not in str(caught.value)  # the value is not echoed

    @pytest.mark.parametrize("name", sorted(registry.BUILTIN))
    def test_a_builtin_is_loaded_without_scanning_installed_distributions(
        self, name: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The scan reads every installed distribution's metadata: tens of milliseconds of a cold start.
        def no_scan(*, group: str) -> list[EntryPoint]:
            raise AssertionError("entry points scanned for a built-in adapter")

        monkeypatch.setattr(registry, "entry_points", no_scan)
        assert registry.adapter_class(f" {name.upper()} ").name == name
        assert registry.settings_of(name)

    def test_build_adapter_with_an_unknown_itsm_adapter(self) -> None:
        with pytest.raises(ConfigError) as caught:
            registry.build_adapter(_settings(ITSM_ADAPTER="remedy"))

        assert caught.value.setting == "ITSM_ADAPTER"

    def test_a_plugin_is_found_by_its_entry_point(self, plugins: list[EntryPoint]) -> None:
        plugins.append(_point(" Remedy ", f"{__name__}:PluginAdapter"))
        plugins.append(_point("other", f"{__name__}:MisnamedAdapter", group="some.other.group"))

        assert registry.references() == {**registry.BUILTIN, "remedy": f"{__name__}:PluginAdapter"}
        assert registry.adapter_class("REMEDY") is PluginAdapter
        assert registry.settings_of("remedy") == PluginAdapter.settings
        session = object()
        settings = _settings(ITSM_ADAPTER="remedy")
        assert isinstance(registry.build_adapter(settings, session), PluginAdapter)  # type: ignore[arg-type]
        assert PluginAdapter.built == [(settings, session)]

    def test_a_plugin_whose_class_has_another_name_is_refused(self, plugins: list[EntryPoint]) -> None:
        plugins.append(_point("remedy", f"{__name__}:MisnamedAdapter"))

        with pytest.raises(ConfigError) as caught:
            registry.adapter_class("remedy")

        assert caught.value.setting == "ITSM_ADAPTER"
        assert "MisnamedAdapter" in str(caught.value)
        with pytest.raises(ConfigError):
            registry.build_adapter(_settings(ITSM_ADAPTER="remedy"))
        assert PluginAdapter.built == []

    @pytest.mark.parametrize(
        "value",
        ["bridge_no_such_package:RemedyAdapter", f"{__name__}:NoSuchClass", "bridge.adapters.registry:BUILTIN"],
    )
    def test_a_plugin_that_cannot_be_loaded_is_a_config_error(self, plugins: list[EntryPoint], value: str) -> None:
        plugins.append(_point("remedy", value))

        with pytest.raises(ConfigError) as caught:
            registry.adapter_class("remedy")

        assert caught.value.setting == "ITSM_ADAPTER"

    def test_a_plugin_whose_module_fails_to_import_is_a_config_error(
        self, plugins: list[EntryPoint], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "bridge_broken_plugin.py").write_text('raise RuntimeError("boom at import")\n')
        monkeypatch.syspath_prepend(str(tmp_path))
        plugins.append(_point("remedy", "bridge_broken_plugin:RemedyAdapter"))

        with pytest.raises(ConfigError) as caught:
            registry.adapter_class("remedy")

        assert caught.value.setting == "ITSM_ADAPTER" and "RuntimeError" in str(caught.value)

    def test_a_plugin_cannot_take_over_a_builtin_name(
        self, plugins: list[EntryPoint], caplog: pytest.LogCaptureFixture
    ) -> None:
        plugins.append(_point("servicenow", f"{__name__}:PluginAdapter"))

        with caplog.at_level(logging.WARNING, logger=registry.__name__):
            found = registry.references()

        assert found["servicenow"] == registry.BUILTIN["servicenow"]
        assert any("servicenow" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)

    def test_the_same_reference_twice_is_not_a_conflict(
        self, plugins: list[EntryPoint], caplog: pytest.LogCaptureFixture
    ) -> None:
        plugins.append(_point("servicenow", registry.BUILTIN["servicenow"]))

        with caplog.at_level(logging.WARNING, logger=registry.__name__):
            assert registry.references() == dict(registry.BUILTIN)

        assert not caplog.records

    def test_importing_the_core_loads_no_adapter(self) -> None:
        code = (
            "import sys, bridge.adapters, bridge.adapters.registry, bridge.adapters.base\n"
            "loaded = sorted(m for m in sys.modules if m == 'requests' or m.startswith('bridge.adapters.'))\n"
            "print(loaded)\n"
        )
        result = subprocess.run(  # noqa: S603 - our own interpreter and code
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, timeout=60
        )

        assert result.stdout.strip() == "['bridge.adapters.base', 'bridge.adapters.registry']"
