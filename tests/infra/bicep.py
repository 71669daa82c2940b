"""Reading the templates in ``infra/`` without Azure or the Bicep CLI: parsing, and playing a deployment.

Every ``.bicep`` file is parsed with pycep-parser (>= 0.7, which understands ``extension``).
:func:`deployment` then evaluates main.bicep and its modules for given parameter values, as far as the
tests need it, so what a ServiceNow, Jira or plugin deployment gets (app settings, alert rules, scale
settings) is checked as Azure would compute it; whatever only Azure knows is a :class:`DeployTime`.

pycep-parser's JSON shape, in short: identifiers and string literals are both plain strings;
interpolated strings keep their ``${...}``; expressions are ``{"function": {"type", "parameters"}}``
or ``{"operator": {"type", "operands"}}``; a conditional resource's (or module's) body is
``{"condition": ..., "config": {...}}``, a resource loop's ``{"loop_type": ..., "condition": ...,
"config": {...}}``; quoted object keys keep their quotes; escapes in string literals are kept as
written.
"""

from __future__ import annotations

import copy
import functools
import json
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
TEMPLATES = sorted(INFRA.rglob("*.bicep"))

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INTERPOLATION = re.compile(r"\$\{([^}]*)\}")


# ---------- parsing helpers ----------


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    return cast(dict[str, Any], BicepParser().parse(file_path=path))


def template(relative: str) -> dict[str, Any]:
    return parse(INFRA / relative)


@dataclass(frozen=True)
class Resource:
    name: str
    type: str
    api_version: str
    existing: bool
    condition: Any
    body: dict[str, Any]
    # A resource loop ([for item in array: {...}]): pycep's loop_type, whose detail names the item
    # and the array; the body then reads the item.
    loop: dict[str, Any] | None = None


def resources(tpl: dict[str, Any]) -> dict[str, Resource]:
    out = {}
    for name, raw in (tpl.get("resources") or {}).items():
        config = raw["config"]
        condition = loop = None
        if "loop_type" in config:
            loop, condition, config = config["loop_type"], config["condition"], config["config"]
        elif set(config) == {"condition", "config"}:
            condition, config = config["condition"], config["config"]
        out[name] = Resource(name, raw["type"], raw["api_version"], raw["existing"], condition, config, loop)
    return out


def resources_of_type(tpl: dict[str, Any], resource_type: str) -> list[Resource]:
    return [r for r in resources(tpl).values() if r.type == resource_type and not r.existing]


def the_resource(tpl: dict[str, Any], resource_type: str) -> Resource:
    found = resources_of_type(tpl, resource_type)
    assert len(found) == 1, f"expected one {resource_type}, found {[r.name for r in found]}"
    return found[0]


def refs(node: Any, *, skip_empty_checks: bool = False) -> set[str]:
    """Identifiers an expression reads (the root of each property chain, names inside ``${...}``).

    With ``skip_empty_checks``, arguments of ``empty(...)`` are ignored: testing whether a secret was
    given does not let its value flow anywhere.
    """
    found: set[str] = set()
    if isinstance(node, str):
        if _IDENT.match(node):
            found.add(node)
        for inner in INTERPOLATION.findall(node):
            found.update(re.findall(r"(?<![.\w])[A-Za-z_]\w*", inner))
    elif isinstance(node, list):
        for item in node:
            found |= refs(item, skip_empty_checks=skip_empty_checks)
    elif isinstance(node, dict):
        if "operator" in node and isinstance(node["operator"], dict) and "operands" in node["operator"]:
            op = node["operator"]
            operands = op["operands"]
            if op["type"] in ("property_accessor", "index_accessor"):
                found |= refs(operands["operand_1"], skip_empty_checks=skip_empty_checks)
                if op["type"] == "index_accessor" or not isinstance(operands["operand_2"], str):
                    found |= _accessor_tail_refs(operands["operand_2"], skip_empty_checks)
            else:
                for value in operands.values():
                    found |= refs(value, skip_empty_checks=skip_empty_checks)
        elif "function" in node and isinstance(node["function"], dict) and "type" in node["function"]:
            if skip_empty_checks and node["function"]["type"] == "empty":
                return found
            for value in (node["function"].get("parameters") or {}).values():
                found |= refs(value, skip_empty_checks=skip_empty_checks)
        else:
            for value in node.values():
                found |= refs(value, skip_empty_checks=skip_empty_checks)
    return found


def _accessor_tail_refs(node: Any, skip_empty_checks: bool) -> set[str]:
    # The tail of a.b[c].d: property names are not references, index expressions are.
    if isinstance(node, dict) and "operator" in node and node["operator"]["type"] == "index_accessor":
        return refs(node["operator"]["operands"]["operand_2"], skip_empty_checks=skip_empty_checks)
    if isinstance(node, dict) and "operator" in node and node["operator"]["type"] == "property_accessor":
        return _accessor_tail_refs(node["operator"]["operands"]["operand_2"], skip_empty_checks)
    return set()


def accessor_path(node: Any) -> str:
    """``a.b.c`` for a property-accessor chain (or the plain identifier)."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and "operator" in node and node["operator"]["type"] == "property_accessor":
        operands = node["operator"]["operands"]
        return f"{accessor_path(operands['operand_1'])}.{accessor_path(operands['operand_2'])}"
    if isinstance(node, dict) and "function" in node:
        return f"{node['function']['type']}()"
    raise AssertionError(f"not a property chain: {node!r}")


def secure_params(tpl: dict[str, Any]) -> set[str]:
    return {
        name
        for name, spec in (tpl.get("parameters") or {}).items()
        if any(d["type"] == "secure" for d in spec["decorators"])
    }


def tainted_names(tpl: dict[str, Any]) -> set[str]:
    """Secure parameters plus every variable whose value (transitively) reads one."""
    tainted = secure_params(tpl)
    variables = tpl.get("variables") or {}
    changed = True
    while changed:
        changed = False
        for name, spec in variables.items():
            if name not in tainted and refs(spec["value"]) & tainted:
                tainted.add(name)
                changed = True
    return tainted


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)


def main_module(name: str) -> dict[str, Any]:
    module: dict[str, Any] = template("main.bicep")["modules"][name]
    return module


def module_config(module: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(condition or None, the module's body: name, scope, params, dependsOn) of a parsed module."""
    config: dict[str, Any] = module["config"]
    if set(config) == {"condition", "config"}:
        return config["condition"], config["config"]
    return None, config


def description(param: dict[str, Any]) -> str:
    return " ".join(str(d["argument"]) for d in param["decorators"] if d["type"] == "description")


# ---------- playing a deployment through the templates ----------


@dataclass(frozen=True)
class DeployTime:
    """A value only Azure knows (a resource property, tenant(), uniqueString(), ...); never empty."""

    expression: str

    def __str__(self) -> str:
        return f"<{self.expression}>"


class Scope(Mapping[str, Any]):
    """One template's parameters and variables as one deployment sees them, computed when read.

    ``given`` holds thunks: a module's parameters are main.bicep expressions, evaluated only when
    the module reads them.
    """

    def __init__(self, path: Path, given: Mapping[str, Callable[[], Any]]) -> None:
        self.path = path
        self.tpl = parse(path)
        self.params: dict[str, Any] = self.tpl.get("parameters") or {}
        self.variables: dict[str, Any] = self.tpl.get("variables") or {}
        unknown = set(given) - set(self.params)
        assert not unknown, f"{path.name} declares no parameter {sorted(unknown)}"
        self.given = given
        self._values: dict[str, Any] = {}
        self._modules: dict[str, Scope] = {}
        self._locals: dict[str, Any] = {}

    def bind(self, **names: Any) -> Scope:
        """This scope with a loop's item (and index) bound, as the body of ``[for ...]`` sees it."""
        bound = copy.copy(self)
        bound._locals = {**self._locals, **names}
        return bound

    def __getitem__(self, name: str) -> Any:
        if name in self._locals:
            return self._locals[name]
        if name not in self._values:
            if name in self.given:
                value = self.given[name]()
                for decorator in self.params[name]["decorators"]:
                    # ARM refuses a value outside @allowed, @minValue or @maxValue before anything is deployed.
                    kind, bound = decorator["type"], decorator.get("argument")
                    if (
                        (kind == "allowed" and value not in bound)
                        or (kind == "min_value" and value < bound)
                        or (kind == "max_value" and value > bound)
                    ):
                        raise ValueError(f"{self.path.name}: {name}={value!r} is not allowed")
            elif name in self.params:
                default = self.params[name]["default"]
                assert default is not None, f"{self.path.name}: parameter {name} needs a value"
                value = evaluate(default, self)
            elif name in self.variables:
                value = evaluate(self.variables[name]["value"], self)
            else:
                raise KeyError(name)
            self._values[name] = value
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._locals or name in self.given or name in self.params or name in self.variables

    def __iter__(self) -> Iterator[str]:
        return iter({**self.params, **self.variables})

    def __len__(self) -> int:
        return len({**self.params, **self.variables})

    def module(self, name: str) -> Scope:
        if name not in self._modules:
            module = self.tpl["modules"][name]
            path = self.path.parent / module["detail"]["path"]
            thunks = {
                param: functools.partial(evaluate, node, self)
                for param, node in module_config(module)[1]["params"].items()
            }
            self._modules[name] = Scope(path, thunks)
        return self._modules[name]


def _contains_deploy_time(value: Any) -> bool:
    if isinstance(value, DeployTime):
        return True
    if isinstance(value, list):
        return any(_contains_deploy_time(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_deploy_time(v) for v in value.values())
    return False


_MISSING = object()


def _lookup(path: str, scope: Scope) -> Any:
    """``name`` or ``name.key.key`` read from the scope's parameters, variables and loop items;
    ``_MISSING`` for anything else (a resource's or module's property, a function)."""
    root, *keys = path.split(".")
    if not _IDENT.match(root) or root not in scope:
        return _MISSING
    value = scope[root]
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


_OFFSET = re.compile(r"^(\w+)\s*([+-])\s*(\d+)$")


def _interpolate(expression: str, scope: Scope) -> str:
    expression = expression.strip()
    offset = _OFFSET.match(expression)
    if offset and isinstance(base := _lookup(offset.group(1), scope), int):
        # A loop index shifted, as in '${i + 1}'.
        return str(base + int(offset.group(3)) * (1 if offset.group(2) == "+" else -1))
    value = _lookup(expression, scope)
    if value is _MISSING:
        return f"<{expression}>"  # a resource property or function: Azure fills it in
    return value if isinstance(value, str) else str(value) if isinstance(value, DeployTime) else json.dumps(value)


def _call(function: str, args: list[Any]) -> Any:
    if function == "union" and all(isinstance(a, dict) for a in args):
        merged: dict[str, Any] = {}
        for arg in args:
            merged.update(arg)  # later arguments win, as in Bicep
        return merged
    if function == "concat" and all(isinstance(a, list) for a in args):
        return [item for arg in args for item in arg]
    if function == "empty":
        [value] = args
        return False if isinstance(value, DeployTime) else value is None or len(value) == 0
    if any(_contains_deploy_time(a) for a in args):
        return DeployTime(f"{function}()")
    if function == "join":
        items, delimiter = args
        return str(delimiter).join(items)
    if function == "to_lower":
        return str(args[0]).lower()
    if function == "replace":
        text, old, new = args
        return str(text).replace(old, new)
    if function == "split":
        text, delimiter = args
        return str(text).split(delimiter)
    return DeployTime(f"{function}()")


def _call_in(function: dict[str, Any], scope: Scope) -> Any:
    name, parameters = function["type"], function.get("parameters") or {}
    if name == "load_json_content":
        # Read at build time, relative to the template, like Bicep does.
        assert parameters["json_path"] is None, "jsonPath of loadJsonContent is not supported here"
        return json.loads((scope.path.parent / parameters["file_path"]).read_text())
    args = [evaluate(a, scope) for a in parameters.values()]
    if name == "string" and not isinstance(args[0], str):
        # Bicep serializes objects and arrays as JSON; what only Azure knows shows as its placeholder.
        return json.dumps(args[0], default=str)
    return _call(name, args)


def _operate(node: dict[str, Any], scope: Scope) -> Any:
    kind, operands = node["operator"]["type"], node["operator"]["operands"]
    if kind == "conditional":
        condition = evaluate(operands["condition"], scope)
        assert isinstance(condition, bool), f"condition not known before the deployment: {operands['condition']!r}"
        return evaluate(operands["true_value"] if condition else operands["false_value"], scope)
    if kind == "property_accessor":
        try:
            path = accessor_path(node)
        except AssertionError:
            return DeployTime(kind)
        value = _lookup(path, scope)
        if value is not _MISSING:
            return value
        module, _, output = path.partition(".outputs.")
        if output and "modules" in scope.tpl and module in scope.tpl["modules"]:
            inner = scope.module(module)
            return evaluate(inner.tpl["outputs"][output]["value"], inner)
        return DeployTime(path)
    values = [evaluate(v, scope) for v in operands.values()]
    if any(isinstance(v, DeployTime) for v in values):
        return DeployTime(kind)
    if kind == "not":
        return not values[0]
    if kind in ("equals", "not_equals"):
        return (values[0] == values[1]) == (kind == "equals")
    if kind in ("equals_case_insensitive", "not_equals_case_insensitive"):
        same = str(values[0]).lower() == str(values[1]).lower()
        return same == (kind == "equals_case_insensitive")
    if kind in _ORDER:
        return bool(_ORDER[kind](values[0], values[1]))
    if kind in ("and", "or"):
        return all(values) if kind == "and" else any(values)
    return DeployTime(kind)


_ORDER: dict[str, Callable[[Any, Any], Any]] = {
    "greater_than": operator.gt,
    "greater_than_or_equals": operator.ge,
    "less_than": operator.lt,
    "less_than_or_equals": operator.le,
}


def evaluate(node: Any, scope: Scope) -> Any:
    """The value of a pycep expression in one deployment (what Bicep would compute, as far as the
    tests need it: string interpolation, union/concat/empty/join/toLower/split/replace/string,
    loadJsonContent, conditionals, comparisons, and/or, module outputs, properties of objects and loop
    items). Anything only Azure knows is a :class:`DeployTime`."""
    if isinstance(node, str):
        if node in scope:
            return scope[node]
        return INTERPOLATION.sub(lambda m: _interpolate(m.group(1), scope), node)
    if isinstance(node, list):
        return [evaluate(item, scope) for item in node]
    if isinstance(node, dict):
        if isinstance(node.get("function"), dict) and "type" in node["function"]:
            return _call_in(node["function"], scope)
        if isinstance(node.get("operator"), dict) and "operands" in node["operator"]:
            return _operate(node, scope)
        if "loop_type" in node:
            return [
                evaluate(node["config"], item) for item in _loop_scopes(node["loop_type"], node["condition"], scope)
            ]
        return {key.strip("'"): evaluate(value, scope) for key, value in node.items()}
    return node  # numbers, booleans, null


def deployment(**params: Any) -> Scope:
    """main.bicep with these parameter values (environmentName and location filled in)."""
    given = {"environmentName": "itsm-test", "location": "westeurope", **params}
    return Scope(INFRA / "main.bicep", {name: functools.partial(lambda v: v, value) for name, value in given.items()})


def _loop_scopes(loop: dict[str, Any] | None, condition: Any, scope: Scope) -> list[Scope]:
    """The scope of each iteration of ``[for ...: if (condition) {...}]`` that deploys (a plain
    resource is one iteration)."""
    items = [scope]
    if loop is not None:
        detail = loop["detail"]
        array = evaluate(detail["array_name"], scope)
        assert isinstance(array, list), f"loop over {array!r}"
        index = detail.get("index_name")
        items = [
            scope.bind(**{detail["item_name"]: item, **({index: i} if index else {})}) for i, item in enumerate(array)
        ]
    return [item for item in items if condition is None or evaluate(condition, item) is True]


def instances(resource: Resource, scope: Scope) -> list[dict[str, Any]]:
    """The bodies a resource deploys in this scope: none when its condition is false, one per item of
    its loop, else one."""
    return [evaluate(resource.body, item) for item in _loop_scopes(resource.loop, resource.condition, scope)]
