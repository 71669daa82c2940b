"""The layout keeps its promises: no ITSM's names outside its adapter and its stand-in (the README's
grep, as a test), and no import cycles hidden by late imports in the core."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BRIDGE = ROOT / "bridge"
# The same pattern and exclusions as the README's "Project layout" section.
ITSM_NAMES = re.compile(r"service-?now|sys_id|cmdb_ci|work_notes|short_description|close_code|jira|jql|atlassian", re.I)
OWN_PLACES = re.compile(r"^bridge/(adapters/(servicenow|jira)\.py|sandbox/)")
# Where an adapter's *name* must be known, and the mapping file's keys of earlier versions.
ALLOWED = {
    "bridge/adapters/registry.py": {"servicenow", "jira"},
    "bridge/config.py": {"servicenow", "jira"},
    "bridge/cli.py": {"servicenow", "jira"},
    "bridge/demo.py": {"servicenow"},
    "bridge/rules.py": {"short_description", "close_code"},
}


def test_no_itsm_names_outside_their_adapter_and_stand_in() -> None:
    found: dict[str, set[str]] = {}
    for path in sorted(BRIDGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if OWN_PLACES.match(relative):
            continue
        for match in ITSM_NAMES.finditer(path.read_text(encoding="utf-8")):
            found.setdefault(relative, set()).add(match.group(0).lower())
    unexpected = {path: names - ALLOWED.get(path, set()) for path, names in found.items()}
    assert {path: names for path, names in unexpected.items() if names} == {}


def test_the_core_imports_no_adapter_and_no_sandbox_at_module_level() -> None:
    """Adapters are loaded by the registry when asked for; the sandbox only by cli/demo, lazily."""
    core = [p for p in BRIDGE.glob("*.py") if p.name not in ("cli.py", "demo.py", "__main__.py")]
    neutral = [*core, *BRIDGE.glob("state/*.py"), BRIDGE / "adapters" / "base.py", BRIDGE / "adapters" / "registry.py"]
    for path in neutral:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only
            if isinstance(node, ast.ImportFrom) and node.module:
                module = ("." * node.level) + node.module
                assert "sandbox" not in module, f"{path.name} imports {module}"
                assert not re.search(r"adapters\.(servicenow|jira)$|^\.(servicenow|jira)$", module), (
                    f"{path.name} imports {module}"
                )
