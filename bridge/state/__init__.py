"""Durable per-alert state and the outbox: the interface, the record, and the two backends.

:func:`build_store` picks the backend named by ``STATE_STORE``. The Azure SDK is imported only
when the ``azure`` backend is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import DueWork, StateConflict, StateStore, StateUnavailable, Versioned

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["DueWork", "StateConflict", "StateStore", "StateUnavailable", "Versioned", "build_store"]


def build_store(settings: Settings) -> StateStore:
    """The state store the settings name (SQLite file, or Azure Table + Queue)."""
    if settings.state_store == "azure":
        from .azure import AzureStore

        assert settings.storage is not None  # Settings.from_env refuses azure without a connection
        store: StateStore = AzureStore(settings.storage, settings.state_table_name, settings.outbox_queue_name)
        return store
    from .sqlite import SqliteStore

    return SqliteStore(settings.state_sqlite_path)
