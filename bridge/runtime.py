"""Wiring: settings, HTTP sessions, verifier, adapter and lifecycle, built once per process.

``function_app.py`` and the local server both call :func:`get_api`; the first call builds
everything from the environment, later calls return the same object (connection pools and
the signing-key cache live as long as the process).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

from .adapters import build_adapter
from .api import BridgeApi, UnavailableApi
from .auth import TokenVerifier
from .cmdb import CmdbBinder
from .config import Settings
from .errors import ConfigError
from .httpclient import new_session
from .lifecycle import Lifecycle
from .retry import RetryPolicy

__all__ = ["build_api", "get_api", "install", "reset"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_api: BridgeApi | UnavailableApi | None = None


def build_api(env: Mapping[str, str], *, sleep: Callable[[float], None] = time.sleep) -> BridgeApi:
    """Everything the API needs, from one environment. Raises ConfigError naming the setting.

    ``sleep`` is what retry back-off waits with (tests record the waits instead).
    """
    settings = Settings.from_env(env)
    adapter = build_adapter(settings, new_session())
    cmdb = (
        CmdbBinder(adapter, ttl_seconds=settings.cmdb_cache_seconds) if settings.cmdb_lookup else None
    )
    lifecycle = Lifecycle(
        adapter, settings.mapping, RetryPolicy.from_settings(settings), cmdb, sleep=sleep
    )
    verifier = TokenVerifier(settings, new_session())
    return BridgeApi(settings, verifier, lifecycle, adapter_name=adapter.name)


def get_api(env: Mapping[str, str] | None = None) -> BridgeApi | UnavailableApi:
    """The process-wide API; on bad settings, an API that answers 503 and logs why, once."""
    global _api
    with _lock:
        if _api is None:
            try:
                _api = build_api(os.environ if env is None else env)
            except ConfigError as exc:
                logger.critical("bridge settings are invalid, alerts will get 503: %s", exc)
                _api = UnavailableApi(exc.setting, str(exc))
            except Exception as exc:
                # Never let the host answer 500 (Azure Monitor does not retry it): 503 instead.
                logger.exception("the bridge could not start, alerts will get 503")
                _api = UnavailableApi("(start-up)", f"start-up failed: {type(exc).__name__}")
        return _api


def reset() -> None:
    """Forget the process-wide API (tests, and ``serve`` after it changes the environment)."""
    global _api
    with _lock:
        _api = None


def install(api: BridgeApi | UnavailableApi) -> None:
    """Make ``api`` the process-wide API (tests build one with recorded sleeps)."""
    global _api
    with _lock:
        _api = api
