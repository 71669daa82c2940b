"""ITSM adapters: the neutral contract (:mod:`.base`), the registry that finds them
(:mod:`.registry`), the shared HTTP client (:mod:`.http`) and the built-in adapters.

Importing this package imports no adapter: ask :func:`build_adapter` for one.
"""

from __future__ import annotations

from .registry import adapter_class, build_adapter, references

__all__ = ["adapter_class", "build_adapter", "references"]
