"""Wiring: settings, HTTP sessions, verifier, adapter, state store, reconciler and outbox worker,
built once per process.

``function_app.py`` and the local server both call :func:`get_runtime` (or :func:`get_api`); the
first call builds everything from the environment, later calls return the same objects
(connection pools, the state store and the signing-key cache live as long as the process).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import telemetry
from .adapters import build_adapter
from .adapters.registry import settings_of
from .api import BridgeApi, UnavailableApi
from .auth import TokenVerifier
from .cmdb import CmdbBinder
from .config import Settings, SettingsErrors, UnresolvedReference, unresolved_references
from .errors import ConfigError
from .health import HealthChecks
from .httpclient import new_session
from .reconcile import Reconciler, Timing
from .retry import RetryPolicy
from .state import build_store
from .worker import OutboxWorker

__all__ = ["Runtime", "build_api", "build_runtime", "get_api", "get_runtime", "install", "reset", "validate"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_runtime: Runtime | None = None
_api: BridgeApi | UnavailableApi | None = None


@dataclass(frozen=True)
class Runtime:
    """Everything one process serves with: the HTTP API and the outbox worker over one reconciler."""

    api: BridgeApi
    reconciler: Reconciler
    worker: OutboxWorker

    def close(self) -> None:
        self.worker.stop()
        self.reconciler.store.close()
        self.reconciler.adapter.close()


def build_runtime(env: Mapping[str, str], *, sleep: Callable[[float], None] = time.sleep) -> Runtime:
    """Everything from one environment. Raises ConfigError naming the setting.

    ``sleep`` is what retry back-off waits with (tests record the waits instead).
    """
    # First, so that even a start-up refused for bad settings is reported (when telemetry is on).
    telemetry.configure(env)
    settings = Settings.from_env(env)
    unresolved = _tolerated_references(settings)
    adapter = build_adapter(settings, new_session())
    cmdb = (
        CmdbBinder(adapter, ttl_seconds=settings.cmdb_cache_seconds) if settings.cmdb_lookup else None
    )
    store = build_store(settings)
    reconciler = Reconciler(
        store, adapter, settings.mapping, RetryPolicy.from_settings(settings), cmdb,
        timing=Timing.from_settings(settings), sleep=sleep,
    )
    verifier = TokenVerifier(settings, new_session())
    health = HealthChecks(settings, verifier, reconciler, unresolved=unresolved)
    api = BridgeApi(settings, verifier, reconciler, adapter_name=adapter.name, health=health)
    return Runtime(api, reconciler, OutboxWorker(reconciler, retention_seconds=settings.retention_seconds))


def validate(env: Mapping[str, str]) -> Settings:
    """What ``check-config`` checks: the settings, and every client built from them (no network
    call, and no state file created). Raises ConfigError naming the setting; an unresolved Key
    Vault reference is refused here even where the running bridge tolerates it."""
    settings = Settings.from_env(env)
    _raise_all([ref.error() for ref in unresolved_references(env, settings_of(settings.itsm_adapter))])
    build_adapter(settings, new_session()).close()
    TokenVerifier(settings, new_session())
    if settings.state_store == "azure":
        build_store(settings).close()  # the SDK clients parse the connection; nothing is sent
    return settings


def _tolerated_references(settings: Settings) -> list[UnresolvedReference]:
    """The unresolved Key Vault references the bridge starts with, logged; ConfigError for the rest.

    A credential holding the reference text is tolerated on purpose: refusing to start would answer
    503 to every alert, and Azure Monitor stops retrying after about a minute (the alerts are lost).
    Started, the bridge records each alert durably and holds it (202) while the ITSM refuses the
    text as a credential, health says degraded naming the setting, and the held work goes out once
    the reference resolves. Any other setting's text would be believed (an audience, a URL), so
    those are bad settings like any other.
    """
    found = unresolved_references(settings.env, settings_of(settings.itsm_adapter))
    _raise_all([ref.error() for ref in found if not ref.tolerated])
    for ref in found:
        logger.critical(
            "%s holds an unresolved Key Vault reference (the @Microsoft.KeyVault(...) text, not the value); "
            "the bridge runs degraded until it resolves: check the secret exists and the app's identity may "
            "read it",
            ref.setting,
        )
    return found


def _raise_all(problems: list[ConfigError]) -> None:
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise SettingsErrors(problems)


def build_api(env: Mapping[str, str], *, sleep: Callable[[float], None] = time.sleep) -> BridgeApi:
    """The API alone (its reconciler's outbox is then driven by someone else)."""
    return build_runtime(env, sleep=sleep).api


def get_runtime(env: Mapping[str, str] | None = None) -> Runtime | None:
    """The process-wide runtime, or None when the settings are bad (see :func:`get_api`)."""
    _ensure(env)
    return _runtime


def get_api(env: Mapping[str, str] | None = None) -> BridgeApi | UnavailableApi:
    """The process-wide API; on bad settings, an API that answers 503 and logs why, once."""
    _ensure(env)
    assert _api is not None
    return _api


def _ensure(env: Mapping[str, str] | None) -> None:
    global _api, _runtime
    with _lock:
        if _api is None:
            try:
                _runtime = build_runtime(os.environ if env is None else env)
                _api = _runtime.api
            except ConfigError as exc:
                logger.critical("bridge settings are invalid, alerts will get 503: %s", exc)
                _api = UnavailableApi(exc.setting, str(exc))
            except Exception as exc:
                # Never let the host answer 500 (Azure Monitor does not retry it): 503 instead.
                logger.exception("the bridge could not start, alerts will get 503")
                _api = UnavailableApi("(start-up)", f"start-up failed: {type(exc).__name__}")


def reset() -> None:
    """Forget the process-wide runtime (tests, and ``serve`` after it changes the environment)."""
    global _api, _runtime
    with _lock:
        _api = None
        _runtime = None


def install(api: BridgeApi | UnavailableApi, runtime: Runtime | None = None) -> None:
    """Make ``api`` (and ``runtime``) the process-wide ones (tests build them with recorded sleeps)."""
    global _api, _runtime
    with _lock:
        _api = api
        _runtime = runtime
