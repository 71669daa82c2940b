"""Fixtures shared across the suite: the Entra ID stand-in and the Function's user functions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import azure.functions as func
import pytest

from bridge.sandbox.entra import EntraStandIn

from .azurite import Azurite


@pytest.fixture(scope="session")
def entra() -> Iterator[EntraStandIn]:
    with EntraStandIn() as stand_in:
        yield stand_in


@pytest.fixture(scope="session")
def user_functions() -> dict[str, Callable[[func.HttpRequest], Any]]:
    """The decorated functions of ``function_app.py``, callable without the Functions host.

    ``get_functions()`` registers names and may run once per app, hence session scope.
    """
    import function_app

    return {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One Azurite for the session (Queue and Table on OS-chosen ports); tests use fresh names in it."""
    server = Azurite().start()
    try:
        yield server
    finally:
        server.stop()
