"""Which ITSM adapters exist, found the way a plugin would be: by entry point, imported when used.

An adapter is a ``module:Class`` reference under a name. The built-ins are listed here *and* in
``pyproject.toml`` under the ``bridge.adapters`` entry-point group; an installed package adds
its own ITSM by declaring an entry point in that group, without touching this repository::

    [project.entry-points."bridge.adapters"]
    remedy = "bridge_remedy:RemedyAdapter"

Nothing is imported until an adapter is asked for, so importing the core never loads an ITSM
client (or ``requests``). The Function app is deployed from source (not installed), which is why
the built-ins are also known without their entry points.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    import requests

    from ..config import Setting, Settings
    from .base import ItsmAdapter

__all__ = ["BUILTIN", "GROUP", "adapter_class", "build_adapter", "references", "settings_of"]

logger = logging.getLogger(__name__)

GROUP = "bridge.adapters"
BUILTIN: Mapping[str, str] = {
    "servicenow": "bridge.adapters.servicenow:ServiceNowAdapter",
    "jira": "bridge.adapters.jira:JiraAdapter",
}


def references() -> dict[str, str]:
    """Every known adapter name -> ``module:Class``: the built-ins, then installed plugins."""
    found = dict(BUILTIN)
    for point in entry_points(group=GROUP):
        name = point.name.strip().lower()
        if name in found and found[name] != point.value:
            # A plugin cannot take over a name another adapter already has.
            logger.warning("adapter %r from %s ignored: the name is taken by %s", name, point.value, found[name])
            continue
        found[name] = point.value
    return found


def adapter_class(name: str) -> type[Any]:
    """The adapter class registered as ``name``; ConfigError("ITSM_ADAPTER") when there is none."""
    key = name.strip().lower()
    # A built-in name is never a plugin's (references() refuses that), so the built-ins need no scan
    # of the installed distributions' metadata: that scan is the dearest part of a cold start.
    reference = BUILTIN.get(key) or references().get(key)
    if reference is None:
        known = ", ".join(sorted(references()))
        # The value is not echoed: the message is shown by the health route.
        raise ConfigError("ITSM_ADAPTER", f"is not a known adapter; known: {known}")
    module_name, _, attribute = reference.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:
        # A plugin's module may fail in any way while importing; it is a bad setting all the same.
        logger.exception("adapter %s (%s) cannot be loaded", name, reference)
        raise ConfigError("ITSM_ADAPTER", f"adapter {name} cannot be loaded ({type(exc).__name__})") from None
    if getattr(cls, "name", None) != name.strip().lower():
        raise ConfigError("ITSM_ADAPTER", f"{reference} does not call itself {name}")
    return cls  # type: ignore[no-any-return]


def settings_of(name: str) -> tuple[Setting, ...]:
    """The settings an adapter declares."""
    return tuple(adapter_class(name).settings)


def build_adapter(settings: Settings, session: requests.Session | None = None) -> ItsmAdapter:
    """The adapter ``ITSM_ADAPTER`` names, built from ``settings`` (and ``session`` if given)."""
    adapter: ItsmAdapter = adapter_class(settings.itsm_adapter).from_settings(settings, session)
    return adapter
