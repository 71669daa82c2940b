"""The adapter registry: every ITSM adapter by its ``name``, and the one place adapters are built.

Adding an ITSM means adding its module and one entry here; nothing is discovered at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import ItsmAdapter
from .servicenow import ServiceNowAdapter

if TYPE_CHECKING:
    import requests

    from ..config import Settings

__all__ = ["ADAPTERS", "build_adapter"]

ADAPTERS: Mapping[str, type[Any]] = MappingProxyType({ServiceNowAdapter.name: ServiceNowAdapter})


def build_adapter(settings: Settings, session: requests.Session | None = None) -> ItsmAdapter:
    """The adapter named by ``ITSM_ADAPTER``, built from ``settings`` (and ``session`` if given)."""
    cls = ADAPTERS.get(settings.itsm_adapter)
    if cls is None:
        known = ", ".join(sorted(ADAPTERS))
        # The value is not echoed: the message is shown by the health route.
        raise ConfigError("ITSM_ADAPTER", f"is not a known adapter; known: {known}")
    adapter: ItsmAdapter = cls(settings, session)
    return adapter
