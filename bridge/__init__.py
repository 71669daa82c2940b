"""Azure Monitor alerts in, ITSM work items out.

The package is transport-neutral: ``function_app.py`` (Azure Functions) and
``python -m bridge serve`` (a local HTTP server) both hand raw requests to
:mod:`bridge.api`, which verifies, parses, maps and delivers each alert.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
