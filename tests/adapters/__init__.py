"""Adapter tests: the shared contract (contract.py) and per-adapter wire tests."""
